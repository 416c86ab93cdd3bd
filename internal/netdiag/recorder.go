package netdiag

import (
	"bufio"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// Log size limits.
const (
	// DefaultMaxFileBytes is the size at which a log file is rotated.
	DefaultMaxFileBytes = 16 << 20
	// DefaultMaxTotalBytes bounds the whole log directory; the oldest files
	// are removed beyond it.
	DefaultMaxTotalBytes = 256 << 20
	// MinMaxFileBytes is the smallest rotation size accepted.
	MinMaxFileBytes = 4 << 10
	// DefaultRecordBuffer is how many records may wait for the writer before
	// new ones are dropped (and counted) rather than stall the data path:
	// with the writer waking every DefaultFlushInterval, about 80 000
	// records a second.
	DefaultRecordBuffer = 16384
	// DefaultFlushInterval is how often the log buffer is written out.
	DefaultFlushInterval = 200 * time.Millisecond
	// logPrefix and logSuffix name the log files: netdiag-<ns>-<pid>.jsonl.
	logPrefix = "netdiag-"
	logSuffix = ".jsonl"
)

// RecorderConfig sets where and how much a Recorder writes.
type RecorderConfig struct {
	// Dir is the log directory, created if missing (e.g. <state>/netdiag).
	Dir string
	// MaxFileBytes rotates the current file when it reaches this size.
	MaxFileBytes int64
	// MaxTotalBytes removes the oldest files when the directory exceeds it.
	MaxTotalBytes int64
	// Buffer is the number of records queued for the writer.
	Buffer int
	// FlushInterval is how often buffered records are written to the file
	// (a crash loses at most this much; Close writes everything).
	FlushInterval time.Duration
}

// DefaultRecorderConfig returns the default limits for dir.
func DefaultRecorderConfig(dir string) RecorderConfig {
	return RecorderConfig{Dir: dir, MaxFileBytes: DefaultMaxFileBytes, MaxTotalBytes: DefaultMaxTotalBytes,
		Buffer: DefaultRecordBuffer, FlushInterval: DefaultFlushInterval}
}

// Validate reports invalid limits.
func (c RecorderConfig) Validate() error {
	var errs []error
	if c.Dir == "" {
		errs = append(errs, errors.New("Dir: must be set"))
	}
	if c.MaxFileBytes < MinMaxFileBytes {
		errs = append(errs, fmt.Errorf("MaxFileBytes %d: must be at least %d", c.MaxFileBytes, MinMaxFileBytes))
	}
	if c.MaxTotalBytes < 2*c.MaxFileBytes {
		errs = append(errs, fmt.Errorf("MaxTotalBytes %d: must be at least twice MaxFileBytes (%d)", c.MaxTotalBytes, c.MaxFileBytes))
	}
	if c.FlushInterval <= 0 {
		errs = append(errs, fmt.Errorf("FlushInterval %v: must be positive", c.FlushInterval))
	}
	if c.Buffer < 1 {
		errs = append(errs, fmt.Errorf("Buffer %d: must be at least 1", c.Buffer))
	}
	return errors.Join(errs...)
}

// Recorder is a Sink that appends records as JSON lines to a rotated,
// size-bounded log directory. Record never blocks and never wakes another
// goroutine: records wait in a queue of Buffer that the writer empties
// every FlushInterval; when it is full, new records are dropped and
// counted.
type Recorder struct {
	cfg RecorderConfig
	log *slog.Logger
	ch  chan Record

	mu      sync.RWMutex // guards closed against Record
	closed  bool
	dropped atomic.Uint64

	stop chan struct{} // closed by Close
	done chan struct{} // closed when the writer has finished
	err  error         // first write error, set by the writer

	f    *os.File
	bw   *bufio.Writer
	size int64
}

// NewRecorder creates the directory and starts the writer.
func NewRecorder(cfg RecorderConfig, log *slog.Logger) (*Recorder, error) {
	if err := cfg.Validate(); err != nil {
		return nil, fmt.Errorf("netdiag recorder config: %w", err)
	}
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	if err := os.MkdirAll(cfg.Dir, 0o750); err != nil {
		return nil, fmt.Errorf("creating netdiag log dir: %w", err)
	}
	r := &Recorder{cfg: cfg, log: log, ch: make(chan Record, cfg.Buffer), stop: make(chan struct{}), done: make(chan struct{})}
	if err := r.rotate(); err != nil {
		return nil, err
	}
	go r.writer()
	return r, nil
}

// Record queues rec for writing; it drops rec if the queue is full.
func (r *Recorder) Record(rec Record) {
	r.mu.RLock()
	if r.closed {
		r.mu.RUnlock()
		return
	}
	select {
	case r.ch <- rec:
		r.mu.RUnlock()
	default:
		r.mu.RUnlock()
		r.dropped.Add(1)
	}
}

// Dropped returns how many records were dropped because the writer was
// behind.
func (r *Recorder) Dropped() uint64 { return r.dropped.Load() }

// Close writes the queued records, closes the file and returns the first
// write error.
func (r *Recorder) Close() error {
	r.mu.Lock()
	if r.closed {
		r.mu.Unlock()
		<-r.done
		return r.err
	}
	r.closed = true
	close(r.stop)
	r.mu.Unlock()
	<-r.done
	if d := r.Dropped(); d > 0 {
		r.log.Warn("netdiag: records dropped because the log writer fell behind", "dropped", d)
	}
	return r.err
}

func (r *Recorder) writer() {
	defer close(r.done)
	tick := time.NewTicker(r.cfg.FlushInterval)
	defer tick.Stop()
	for {
		select {
		case <-r.stop:
			r.writeQueued()
			if err := r.closeFile(); err != nil && r.err == nil {
				r.err = err
			}
			return
		case <-tick.C:
			r.writeQueued()
		}
	}
}

// writeQueued encodes every queued record and flushes the file.
func (r *Recorder) writeQueued() {
	wrote := false
	for {
		var rec Record
		select {
		case rec = <-r.ch:
		default:
			if wrote && r.err == nil {
				if err := r.bw.Flush(); err != nil {
					r.err = fmt.Errorf("writing netdiag log %s: %w", r.f.Name(), err)
				}
			}
			return
		}
		if r.err != nil {
			continue
		}
		line, err := json.Marshal(rec)
		if err != nil {
			r.err = fmt.Errorf("encoding netdiag record: %w", err)
			continue
		}
		line = append(line, '\n')
		if r.size+int64(len(line)) > r.cfg.MaxFileBytes && r.size > 0 {
			if err := r.rotate(); err != nil {
				r.err = err
				continue
			}
		}
		n, err := r.bw.Write(line)
		r.size += int64(n)
		wrote = true
		if err != nil {
			r.err = fmt.Errorf("writing netdiag log %s: %w", r.f.Name(), err)
		}
	}
}

func (r *Recorder) closeFile() error {
	if r.f == nil {
		return nil
	}
	ferr := r.bw.Flush()
	cerr := r.f.Close()
	name := r.f.Name()
	r.f = nil
	if err := errors.Join(ferr, cerr); err != nil {
		return fmt.Errorf("closing netdiag log %s: %w", name, err)
	}
	return nil
}

// rotate closes the current file, opens a new one and prunes old files.
func (r *Recorder) rotate() error {
	if err := r.closeFile(); err != nil {
		return err
	}
	name := filepath.Join(r.cfg.Dir, fmt.Sprintf("%s%020d-%d%s", logPrefix, time.Now().UnixNano(), os.Getpid(), logSuffix))
	f, err := os.OpenFile(name, os.O_CREATE|os.O_WRONLY|os.O_APPEND|os.O_EXCL, 0o640)
	if err != nil {
		return fmt.Errorf("opening netdiag log: %w", err)
	}
	r.f, r.bw, r.size = f, bufio.NewWriterSize(f, 64<<10), 0
	return pruneLogs(r.cfg.Dir, r.cfg.MaxTotalBytes, filepath.Base(name))
}

// logFiles lists the log files in dir, oldest first.
func logFiles(dir string) ([]os.DirEntry, error) {
	ents, err := os.ReadDir(dir)
	if err != nil {
		return nil, fmt.Errorf("listing netdiag log dir: %w", err)
	}
	var out []os.DirEntry
	for _, e := range ents {
		if e.Type().IsRegular() && strings.HasPrefix(e.Name(), logPrefix) && strings.HasSuffix(e.Name(), logSuffix) {
			out = append(out, e)
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name() < out[j].Name() })
	return out, nil
}

// pruneLogs removes the oldest log files until the directory holds at most
// maxTotal bytes, never removing keep.
func pruneLogs(dir string, maxTotal int64, keep string) error {
	files, err := logFiles(dir)
	if err != nil {
		return err
	}
	var total int64
	sizes := make([]int64, len(files))
	for i, e := range files {
		if info, err := e.Info(); err == nil {
			sizes[i] = info.Size()
			total += sizes[i]
		}
	}
	for i, e := range files {
		if total <= maxTotal {
			break
		}
		if e.Name() == keep {
			continue
		}
		if err := os.Remove(filepath.Join(dir, e.Name())); err != nil && !errors.Is(err, os.ErrNotExist) {
			return fmt.Errorf("pruning netdiag log: %w", err)
		}
		total -= sizes[i]
	}
	return nil
}
