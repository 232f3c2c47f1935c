// Command peerload puts the work levee-load puts on a Levee node on the brokers a user
// would pick instead, so that bench/peers.sh can compare them in one run.
//
// The work is levee-load's: C connections; connection i publishes to recipient i+1 with W
// publishes in flight (W goroutines, each publishing and waiting for the broker's durable
// answer before publishing again); every recipient consumes its own messages and
// acknowledges them. A message counts in the end-to-end rate once its recipient has
// acknowledged it; latency runs from the publish call to the delivery. The payload's first
// eight bytes carry the publish time.
//
//   - nats: JetStream, one file-storage stream with work-queue retention (an ack deletes, as
//     in Levee), subjects peers.<i>, one durable pull consumer per recipient with explicit
//     acks. Acks are sent without waiting for the server's confirmation: JetStream has no
//     batch ack under the explicit policy, and waiting on every ack would serialise each
//     consumer. That favours NATS; Levee's count waits for the node's answer to a batch.
//   - mqtt: QoS 1, topic peers/<i>, persistent sessions (clean session off). The library
//     sends the PUBACK after the handler returns.
//
// Modes: e2e (publish and consume together), pub (publish only, counted at the broker's
// answer) and consume (the stream is filled first, then drained); pub and consume are for
// NATS only (an MQTT broker drops what nobody is subscribed to).
//
// With -server-pid the broker's CPU time over the measured interval is reported too, read
// from /proc, so rates can be compared per CPU-second on a shared machine.
package main

import (
	"context"
	"encoding/binary"
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
)

// broker is what a system under test offers the harness.
type broker interface {
	// publisher opens a connection that publishes to recipient `to`; its function returns
	// once the broker has answered that the message is stored.
	publisher(to int) (func(ctx context.Context, payload []byte) error, error)
	// consume delivers recipient i's messages to handle, acknowledging each after it.
	consume(i int, handle func(payload []byte)) error
	close()
}

type options struct {
	system, url, mode, label  string
	connections, window, size int
	duration, warmup          float64
	prefill                   int
	serverPid                 int
}

type result struct {
	Label            string  `json:"label"`
	System           string  `json:"system"`
	Mode             string  `json:"mode"`
	Connections      int     `json:"connections"`
	Window           int     `json:"window"`
	Size             int     `json:"size"`
	Seconds          float64 `json:"seconds"`
	Messages         uint64  `json:"messages"`
	PerSec           float64 `json:"per_sec"`
	P50Ms            float64 `json:"p50_ms"`
	P99Ms            float64 `json:"p99_ms"`
	ServerCPUSeconds float64 `json:"server_cpu_s"`
	ClientCPUSeconds float64 `json:"client_cpu_s"`
}

// harness counts completions and records latencies while measuring.
type harness struct {
	epoch     time.Time
	measuring atomic.Bool
	stop      atomic.Bool
	completed atomic.Uint64
	mu        sync.Mutex
	latencies []time.Duration
}

func (h *harness) stamp(payload []byte) {
	binary.BigEndian.PutUint64(payload, uint64(time.Since(h.epoch)))
}

func (h *harness) delivered(payload []byte) {
	if len(payload) < 8 || !h.measuring.Load() {
		return
	}
	sent := time.Duration(binary.BigEndian.Uint64(payload))
	d := time.Since(h.epoch) - sent
	h.mu.Lock()
	h.latencies = append(h.latencies, d)
	h.mu.Unlock()
}

func (h *harness) quantileMs(q float64) float64 {
	h.mu.Lock()
	defer h.mu.Unlock()
	if len(h.latencies) == 0 {
		return 0
	}
	sort.Slice(h.latencies, func(a, b int) bool { return h.latencies[a] < h.latencies[b] })
	i := int(q * float64(len(h.latencies)-1))
	return float64(h.latencies[i].Microseconds()) / 1000
}

func main() {
	var o options
	flag.StringVar(&o.system, "system", "", "the broker: nats or mqtt")
	flag.StringVar(&o.url, "url", "", "the broker's address (nats://127.0.0.1:4222, tcp://127.0.0.1:1883)")
	flag.StringVar(&o.mode, "mode", "e2e", "e2e, pub or consume (pub and consume: nats only)")
	flag.StringVar(&o.label, "label", "", "a name for this run in the output")
	flag.IntVar(&o.connections, "connections", 8, "publishing (and consuming) connections")
	flag.IntVar(&o.window, "window", 64, "publishes in flight per connection")
	flag.IntVar(&o.size, "size", 256, "message size in bytes")
	flag.Float64Var(&o.duration, "duration", 10, "seconds to measure")
	flag.Float64Var(&o.warmup, "warmup", 2, "seconds of load before measuring")
	flag.IntVar(&o.prefill, "prefill", 200000, "messages stored before a consume run")
	flag.IntVar(&o.serverPid, "server-pid", 0, "the broker's pid, to report its CPU time")
	flag.Parse()
	if err := run(o); err != nil {
		fmt.Fprintln(os.Stderr, "peerload:", err)
		os.Exit(1)
	}
}

func run(o options) error {
	if o.connections < 2 || o.window < 1 || o.size < 8 {
		return fmt.Errorf("need -connections >= 2, -window >= 1 and -size >= 8")
	}
	var b broker
	var err error
	switch o.system {
	case "nats":
		b, err = newNats(o)
	case "mqtt":
		// An MQTT broker drops a message nobody is subscribed to, so publishing alone
		// measures nothing stored; only the end-to-end run compares like with like.
		if o.mode != "e2e" {
			return fmt.Errorf("-system mqtt runs -mode e2e only")
		}
		b, err = newMqtt(o)
	default:
		return fmt.Errorf("-system must be nats or mqtt, not %q", o.system)
	}
	if err != nil {
		return err
	}
	defer b.close()

	h := &harness{epoch: time.Now()}
	var r result
	switch o.mode {
	case "e2e", "pub":
		r, err = steady(o, b, h)
	case "consume":
		r, err = drain(o, b, h)
	default:
		return fmt.Errorf("-mode must be e2e, pub or consume, not %q", o.mode)
	}
	if err != nil {
		return err
	}
	r.Label, r.System, r.Mode = o.label, o.system, o.mode
	r.Connections, r.Window, r.Size = o.connections, o.window, o.size
	return json.NewEncoder(os.Stdout).Encode(r)
}

// steady runs publishers (and, end to end, consumers) for warm-up plus duration and counts
// what completed in the measured interval.
func steady(o options, b broker, h *harness) (result, error) {
	if o.mode == "e2e" {
		for i := 0; i < o.connections; i++ {
			err := b.consume(i, func(p []byte) {
				h.delivered(p)
				h.completed.Add(1)
			})
			if err != nil {
				return result{}, fmt.Errorf("consumer %d: %w", i, err)
			}
		}
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var wg sync.WaitGroup
	errs := make(chan error, o.connections*o.window)
	for i := 0; i < o.connections; i++ {
		publish, err := b.publisher((i + 1) % o.connections)
		if err != nil {
			return result{}, fmt.Errorf("publisher %d: %w", i, err)
		}
		for w := 0; w < o.window; w++ {
			wg.Add(1)
			go func() {
				defer wg.Done()
				payload := make([]byte, o.size)
				for !h.stop.Load() {
					h.stamp(payload)
					start := time.Since(h.epoch)
					if err := publish(ctx, payload); err != nil {
						if ctx.Err() == nil {
							errs <- err
						}
						return
					}
					if o.mode == "pub" {
						if h.measuring.Load() {
							h.mu.Lock()
							h.latencies = append(h.latencies, time.Since(h.epoch)-start)
							h.mu.Unlock()
						}
						h.completed.Add(1)
					}
				}
			}()
		}
	}
	sleep(o.warmup)
	if err := failed(errs, "publishing during warm-up"); err != nil {
		return result{}, err
	}
	cpu, err := markCPU(o.serverPid)
	if err != nil {
		return result{}, err
	}
	before := h.completed.Load()
	h.measuring.Store(true)
	start := time.Now()
	sleep(o.duration)
	h.measuring.Store(false)
	elapsed := time.Since(start).Seconds()
	n := h.completed.Load() - before
	r := result{Seconds: elapsed, Messages: n, PerSec: float64(n) / elapsed}
	if err := cpu.since(o.serverPid, &r); err != nil {
		return result{}, err
	}
	h.stop.Store(true)
	cancel()
	wg.Wait()
	if err := failed(errs, "publishing"); err != nil {
		return result{}, err
	}
	r.P50Ms, r.P99Ms = h.quantileMs(0.5), h.quantileMs(0.99)
	return r, nil
}

// drain stores -prefill messages, then times the consumers taking and acknowledging all.
func drain(o options, b broker, h *harness) (result, error) {
	var next atomic.Int64
	var wg sync.WaitGroup
	errs := make(chan error, o.connections*o.window)
	for i := 0; i < o.connections; i++ {
		publish, err := b.publisher((i + 1) % o.connections)
		if err != nil {
			return result{}, err
		}
		for w := 0; w < o.window; w++ {
			wg.Add(1)
			go func() {
				defer wg.Done()
				payload := make([]byte, o.size)
				for next.Add(1) <= int64(o.prefill) {
					if err := publish(context.Background(), payload); err != nil {
						errs <- err
						return
					}
				}
			}()
		}
	}
	wg.Wait()
	if err := failed(errs, "filling"); err != nil {
		return result{}, err
	}
	cpu, err := markCPU(o.serverPid)
	if err != nil {
		return result{}, err
	}
	done := make(chan struct{})
	var once sync.Once
	start := time.Now()
	for i := 0; i < o.connections; i++ {
		err := b.consume(i, func([]byte) {
			if h.completed.Add(1) == uint64(o.prefill) {
				once.Do(func() { close(done) })
			}
		})
		if err != nil {
			return result{}, err
		}
	}
	select {
	case <-done:
	case <-time.After(10 * time.Minute):
		return result{}, fmt.Errorf("drained %d of %d in 10 minutes", h.completed.Load(), o.prefill)
	}
	elapsed := time.Since(start).Seconds()
	r := result{Seconds: elapsed, Messages: uint64(o.prefill), PerSec: float64(o.prefill) / elapsed}
	if err := cpu.since(o.serverPid, &r); err != nil {
		return result{}, err
	}
	return r, nil
}

func sleep(seconds float64) { time.Sleep(time.Duration(seconds * float64(time.Second))) }

// failed returns the first error a publisher reported, wrapped with what was being done,
// or nil if none has.
func failed(errs <-chan error, doing string) error {
	select {
	case err := <-errs:
		return fmt.Errorf("%s: %w", doing, err)
	default:
		return nil
	}
}

// cpuMark is the CPU time the broker (by pid; 0: none) and this process had used at a
// moment.
type cpuMark struct{ server, self float64 }

func markCPU(serverPid int) (cpuMark, error) {
	server, err := cpuSeconds(serverPid)
	return cpuMark{server, selfCPUSeconds()}, err
}

// since fills in the CPU time used since m.
func (m cpuMark) since(serverPid int, r *result) error {
	now, err := markCPU(serverPid)
	r.ServerCPUSeconds, r.ClientCPUSeconds = now.server-m.server, now.self-m.self
	return err
}

// cpuSeconds is the CPU time a process has used, all its threads together, including
// ended ones: user and system time from /proc/<pid>/stat, in clock ticks (USER_HZ, 100 on
// Linux) — the measure levee-load uses for its node, so both sides are read alike; 0
// without a pid.
func cpuSeconds(pid int) (float64, error) {
	if pid == 0 {
		return 0, nil
	}
	raw, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0, fmt.Errorf("reading the broker's CPU time: %w", err)
	}
	// The command name is in parentheses and may hold spaces: count from after it.
	end := strings.LastIndexByte(string(raw), ')')
	fields := strings.Fields(string(raw)[end+1:])
	if end < 0 || len(fields) < 13 {
		return 0, fmt.Errorf("unexpected /proc/%d/stat: %q", pid, raw)
	}
	var ticks float64
	for _, f := range fields[11:13] { // utime, stime (fields 14 and 15)
		t, err := strconv.ParseFloat(f, 64)
		if err != nil {
			return 0, fmt.Errorf("unexpected /proc/%d/stat: %q", pid, raw)
		}
		ticks += t
	}
	return ticks / 100, nil
}

func selfCPUSeconds() float64 {
	var u syscall.Rusage
	if syscall.Getrusage(syscall.RUSAGE_SELF, &u) != nil {
		return 0
	}
	return time.Duration(u.Utime.Nano() + u.Stime.Nano()).Seconds()
}
