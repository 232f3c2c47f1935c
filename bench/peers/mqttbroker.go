package main

import (
	"context"
	"fmt"
	"sync"
	"time"

	mqtt "github.com/eclipse/paho.mqtt.golang"
)

// mqttBroker is an MQTT 3.1.1 broker at QoS 1: one client per publisher and per recipient,
// persistent sessions, a topic per recipient.
type mqttBroker struct {
	url     string
	run     string
	mu      sync.Mutex
	clients []mqtt.Client
}

func newMqtt(o options) (broker, error) {
	// Client ids are unique per run, so no session left by an earlier run is resumed.
	return &mqttBroker{url: o.url, run: fmt.Sprintf("%d", time.Now().UnixNano())}, nil
}

func (b *mqttBroker) connect(id string) (mqtt.Client, error) {
	opts := mqtt.NewClientOptions().
		AddBroker(b.url).
		SetClientID(id).
		SetCleanSession(false).
		SetOrderMatters(false).
		SetAutoReconnect(false).
		SetConnectTimeout(30 * time.Second)
	c := mqtt.NewClient(opts)
	t := c.Connect()
	if !t.WaitTimeout(30*time.Second) || t.Error() != nil {
		return nil, fmt.Errorf("connecting to %s: %v", b.url, t.Error())
	}
	b.mu.Lock()
	b.clients = append(b.clients, c)
	b.mu.Unlock()
	return c, nil
}

func (b *mqttBroker) publisher(to int) (func(context.Context, []byte) error, error) {
	b.mu.Lock()
	n := len(b.clients)
	b.mu.Unlock()
	c, err := b.connect(fmt.Sprintf("peerload-%s-pub-%d", b.run, n))
	if err != nil {
		return nil, err
	}
	topic := fmt.Sprintf("peers/%d", to)
	return func(ctx context.Context, payload []byte) error {
		// The library keeps no reference to a []byte payload once the PUBACK is in, and
		// the caller reuses its buffer only after that.
		t := c.Publish(topic, 1, false, payload)
		select {
		case <-t.Done():
			return t.Error()
		case <-ctx.Done():
			return ctx.Err()
		}
	}, nil
}

func (b *mqttBroker) consume(i int, handle func([]byte)) error {
	c, err := b.connect(fmt.Sprintf("peerload-%s-sub-%d", b.run, i))
	if err != nil {
		return err
	}
	t := c.Subscribe(fmt.Sprintf("peers/%d", i), 1, func(_ mqtt.Client, m mqtt.Message) {
		handle(m.Payload())
	})
	if !t.WaitTimeout(30*time.Second) || t.Error() != nil {
		return fmt.Errorf("subscribing: %v", t.Error())
	}
	return nil
}

func (b *mqttBroker) close() {
	b.mu.Lock()
	defer b.mu.Unlock()
	for _, c := range b.clients {
		c.Disconnect(250)
	}
}
