package pool

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/url"
	"os"
	"path"
	"sync"
	"sync/atomic"

	"github.com/holdfast/holdfast/internal/bulk"
	"github.com/holdfast/holdfast/internal/cluster"
	"github.com/holdfast/holdfast/internal/repo/backend"
)

// errBulkUnavailable marks a pack the bulk leg could not deliver for a
// reason the API path does not share (the wire listener unreachable, no
// transfer service, a staging root the pool does not see): the pack then
// goes through the API and later packs do too.
var errBulkUnavailable = errors.New("bulk transfer unavailable")

// PackTransfers counts how a backend's pack files travelled.
type PackTransfers struct {
	// Bulk and BulkBytes: packs sent by bulk transfer and adopted.
	Bulk, BulkBytes int64
	// API and APIBytes: packs uploaded through the agent's API.
	API, APIBytes int64
}

// bulkLeg sends pack files to an agent by bulk transfer (internal/bulk:
// primed, paced, multi-connection mTLS) into the repository's staging
// directory under the agent's transfer root, and has the pool adopt them.
type bulkLeg struct {
	be        *AgentBackend
	id        *cluster.Identity
	host      string // the API's host, for the auto address
	addr      string // explicit wire address ("" = auto)
	threshold int64
	log       *slog.Logger

	mu       sync.Mutex
	resolved bool
	off      bool // bulk is not used (any more)
	cl       *bulk.Client
	peer     string // wire address dialled
	dir      string // staging directory relative to the transfer root
}

// packCounters count how an AgentBackend's packs travelled.
type packCounters struct {
	bulkN, bulkBytes, apiN, apiBytes atomic.Int64
}

func newBulkLeg(be *AgentBackend, id *cluster.Identity, host, addr string, threshold int64, log *slog.Logger) *bulkLeg {
	return &bulkLeg{be: be, id: id, host: host, addr: addr, threshold: threshold, log: log}
}

// ready resolves, once, where packs go; it reports whether bulk is used.
func (l *bulkLeg) ready(ctx context.Context) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.resolved {
		return !l.off
	}
	if err := l.resolveLocked(ctx); err != nil {
		if ctx.Err() != nil {
			return false // not resolved: the next pack asks again
		}
		l.log.Info("packs go through the agent's API", "reason", err)
		l.off = true
	}
	l.resolved = true
	return !l.off
}

func (l *bulkLeg) resolveLocked(ctx context.Context) error {
	out, err := l.be.do(ctx, "GET", l.be.base+"/bulk", nil)
	if err != nil {
		return fmt.Errorf("asking the agent for its bulk transfer service: %w", err)
	}
	var info BulkInfo
	if err := json.Unmarshal(out, &info); err != nil {
		return fmt.Errorf("decoding the agent's bulk transfer service: %w", err)
	}
	peer := l.addr
	if peer == "" {
		_, port, err := net.SplitHostPort(info.Listen)
		if err != nil {
			return fmt.Errorf("agent wire listener %q: %w", info.Listen, err)
		}
		peer = net.JoinHostPort(l.host, port)
	}
	// Congestion control as `holdfast cp` chooses it by default (auto:
	// BBR where the kernel has it).
	cl, err := bulk.NewClient(bulk.ClientConfig{TLS: l.id.ClientTLS(l.log), Node: l.id.Name, CC: "auto", Logger: l.log})
	if err != nil {
		return err
	}
	l.cl, l.peer, l.dir = cl, peer, info.Dir
	l.log.Debug("packs go by bulk transfer", "peer", peer, "staging", info.Dir)
	return nil
}

// disable sends later packs through the API.
func (l *bulkLeg) disable(err error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if !l.off {
		l.log.Warn("bulk transfer failed; packs go through the agent's API from now on", "peer", l.peer, "err", err)
		l.off = true
	}
}

// save sends the pack in f (size bytes) by bulk transfer and adopts it as h.
func (l *bulkLeg) save(ctx context.Context, h backend.Handle, f *os.File, size int64) error {
	var rnd [8]byte
	_, _ = rand.Read(rnd[:])
	staged := path.Join(l.dir, h.Name+"-"+hex.EncodeToString(rnd[:]))
	if _, err := l.cl.SendStream(ctx, l.peer, staged, f, size, bulk.Options{}); err != nil {
		if ctx.Err() != nil {
			return fmt.Errorf("sending %s by bulk transfer: %w", h, ctx.Err())
		}
		l.disable(err)
		return fmt.Errorf("%w: sending %s: %w", errBulkUnavailable, h, err)
	}
	_, err := l.be.do(ctx, "POST", l.be.url("adopt", h)+"?from="+url.QueryEscape(staged), nil)
	if err != nil {
		if errors.Is(err, backend.ErrNotExist) {
			// The pool does not see the transfer root the pack went to
			// (an agent whose transfer root the pool was not told).
			l.disable(err)
			return fmt.Errorf("%w: adopting %s: %w", errBulkUnavailable, h, err)
		}
		return fmt.Errorf("adopting %s after its bulk transfer: %w", h, err)
	}
	l.be.packs.bulkN.Add(1)
	l.be.packs.bulkBytes.Add(size)
	return nil
}

func (l *bulkLeg) close() error {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.cl != nil {
		return l.cl.Close()
	}
	return nil
}

// TempFile implements backend.FileSaver: packs are assembled in a local
// temporary file, which SaveFile sends.
func (b *AgentBackend) TempFile() (*os.File, error) {
	return os.CreateTemp("", "holdfast-pack-*")
}

// SaveFile implements backend.FileSaver: a pack of at least the bulk
// threshold goes by bulk transfer and is adopted by the agent's pool;
// anything else, or a pack whose bulk transfer is unavailable, is uploaded
// through the API. f is closed and removed.
func (b *AgentBackend) SaveFile(ctx context.Context, h backend.Handle, f *os.File) error {
	defer func() {
		f.Close()
		os.Remove(f.Name())
	}()
	fi, err := f.Stat()
	if err != nil {
		return fmt.Errorf("saving %s: %w", h, err)
	}
	size := fi.Size()
	if l := b.bulk; l != nil && h.Type == backend.PackFile && size >= l.threshold && l.ready(ctx) {
		err := l.save(ctx, h, f, size)
		if !errors.Is(err, errBulkUnavailable) {
			return err
		}
	}
	if size > MaxUploadSize {
		return fmt.Errorf("saving %s: %d bytes exceed the API's limit of %d", h, size, MaxUploadSize)
	}
	data := make([]byte, size)
	if _, err := f.ReadAt(data, 0); err != nil {
		return fmt.Errorf("saving %s: reading it back: %w", h, err)
	}
	if err := b.Save(ctx, h, data); err != nil {
		return err
	}
	if h.Type == backend.PackFile {
		b.packs.apiN.Add(1)
		b.packs.apiBytes.Add(size)
	}
	return nil
}

// PackTransfers reports how this backend's pack files travelled (packs
// the repository wrote through SaveFile).
func (b *AgentBackend) PackTransfers() PackTransfers {
	return PackTransfers{Bulk: b.packs.bulkN.Load(), BulkBytes: b.packs.bulkBytes.Load(), API: b.packs.apiN.Load(), APIBytes: b.packs.apiBytes.Load()}
}
