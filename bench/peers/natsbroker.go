package main

import (
	"context"
	"fmt"
	"sync"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

const natsStream = "PEERS"

// natsBroker is JetStream: one stream, one connection per publisher and per consumer.
type natsBroker struct {
	url      string
	mu       sync.Mutex
	conns    []*nats.Conn
	consumes []jetstream.ConsumeContext
}

func newNats(o options) (broker, error) {
	b := &natsBroker{url: o.url}
	js, err := b.jetStream()
	if err != nil {
		return nil, err
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	_ = js.DeleteStream(ctx, natsStream)
	_, err = js.CreateStream(ctx, jetstream.StreamConfig{
		Name:      natsStream,
		Subjects:  []string{"peers.>"},
		Storage:   jetstream.FileStorage,
		Retention: jetstream.WorkQueuePolicy,
	})
	if err != nil {
		return nil, fmt.Errorf("creating the stream: %w", err)
	}
	for i := 0; i < o.connections; i++ {
		_, err := js.CreateOrUpdateConsumer(ctx, natsStream, jetstream.ConsumerConfig{
			Durable:       fmt.Sprintf("recipient-%d", i),
			FilterSubject: fmt.Sprintf("peers.%d", i),
			AckPolicy:     jetstream.AckExplicitPolicy,
		})
		if err != nil {
			return nil, fmt.Errorf("creating consumer %d: %w", i, err)
		}
	}
	return b, nil
}

// jetStream opens a connection of its own (closed with the broker) and its JetStream API.
func (b *natsBroker) jetStream() (jetstream.JetStream, error) {
	nc, err := b.connect()
	if err != nil {
		return nil, err
	}
	return jetstream.New(nc)
}

func (b *natsBroker) connect() (*nats.Conn, error) {
	nc, err := nats.Connect(b.url)
	if err != nil {
		return nil, fmt.Errorf("connecting to %s: %w", b.url, err)
	}
	b.mu.Lock()
	b.conns = append(b.conns, nc)
	b.mu.Unlock()
	return nc, nil
}

func (b *natsBroker) publisher(to int) (func(context.Context, []byte) error, error) {
	js, err := b.jetStream()
	if err != nil {
		return nil, err
	}
	subject := fmt.Sprintf("peers.%d", to)
	return func(ctx context.Context, payload []byte) error {
		_, err := js.Publish(ctx, subject, payload)
		return err
	}, nil
}

func (b *natsBroker) consume(i int, handle func([]byte)) error {
	js, err := b.jetStream()
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	c, err := js.Consumer(ctx, natsStream, fmt.Sprintf("recipient-%d", i))
	if err != nil {
		return err
	}
	cc, err := c.Consume(func(m jetstream.Msg) {
		if m.Ack() == nil {
			handle(m.Data())
		}
	}, jetstream.PullMaxMessages(512))
	if err != nil {
		return err
	}
	b.mu.Lock()
	b.consumes = append(b.consumes, cc)
	b.mu.Unlock()
	return nil
}

func (b *natsBroker) close() {
	b.mu.Lock()
	defer b.mu.Unlock()
	for _, cc := range b.consumes {
		cc.Stop()
	}
	for _, nc := range b.conns {
		nc.Close()
	}
}
