package backend

import (
	"bytes"
	"context"
	"errors"
	"net/http/httptest"
	"net/url"
	"os"
	"path/filepath"
	"sort"
	"testing"

	"github.com/johannesboyne/gofakes3"
	"github.com/johannesboyne/gofakes3/backend/s3mem"
)

// newFakeS3 starts gofakes3, an in-process stand-in for a real S3 server
// (no S3 service is reachable from this machine), and returns a backend on it.
func newFakeS3(t *testing.T, prefix string) *S3 {
	t.Helper()
	srv := httptest.NewServer(gofakes3.New(s3mem.New()).Server())
	t.Cleanup(srv.Close)
	u, _ := url.Parse(srv.URL)
	t.Setenv("AWS_ACCESS_KEY_ID", "test")
	t.Setenv("AWS_SECRET_ACCESS_KEY", "testsecret")
	cfg, err := ParseS3Location("s3:http://" + u.Host + "/bucket/" + prefix)
	if err != nil {
		t.Fatal(err)
	}
	be, err := NewS3(cfg)
	if err != nil {
		t.Fatal(err)
	}
	return be
}

func TestBackends(t *testing.T) {
	for _, tc := range []struct {
		name string
		make func(t *testing.T) Backend
	}{
		{"local", func(t *testing.T) Backend { b, _ := NewLocal(t.TempDir() + "/repo"); return b }},
		{"s3 (gofakes3 stand-in)", func(t *testing.T) Backend { return newFakeS3(t, "some/prefix") }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ctx := context.Background()
			be := tc.make(t)
			if err := be.Create(ctx); err != nil {
				t.Fatal(err)
			}
			files := map[Handle][]byte{
				{Type: ConfigFile}:               []byte("config bytes"),
				{Type: KeyFile, Name: "k1"}:      []byte("key"),
				{Type: PackFile, Name: "ab01"}:   bytes.Repeat([]byte{1, 2, 3}, 1000),
				{Type: PackFile, Name: "cd02"}:   []byte("pack two"),
				{Type: SnapshotFile, Name: "s1"}: []byte("snap"),
				{Type: IndexFile, Name: "i1"}:    []byte("idx"),
				{Type: LockFile, Name: "l1"}:     []byte("lock"),
			}
			for h, b := range files {
				if err := be.Save(ctx, h, b); err != nil {
					t.Fatalf("save %s: %v", h, err)
				}
			}
			if err := be.Create(ctx); err == nil {
				t.Fatal("Create over an existing repository succeeded")
			}
			for h, b := range files {
				got, err := be.Load(ctx, h, 0, 0)
				if err != nil || !bytes.Equal(got, b) {
					t.Fatalf("load %s = %q, %v", h, got, err)
				}
				fi, err := be.Stat(ctx, h)
				if err != nil || fi.Size != int64(len(b)) {
					t.Fatalf("stat %s = %+v, %v", h, fi, err)
				}
			}
			part, err := be.Load(ctx, Handle{Type: PackFile, Name: "ab01"}, 1, 4)
			if err != nil || !bytes.Equal(part, []byte{2, 3, 1, 2}) {
				t.Fatalf("range load = %v, %v", part, err)
			}
			tail, err := be.Load(ctx, Handle{Type: PackFile, Name: "ab01"}, 2998, 0)
			if err != nil || !bytes.Equal(tail, []byte{2, 3}) {
				t.Fatalf("tail load = %v, %v", tail, err)
			}
			var names []string
			be.List(ctx, PackFile, func(fi FileInfo) error { names = append(names, fi.Name); return nil })
			sort.Strings(names)
			if len(names) != 2 || names[0] != "ab01" || names[1] != "cd02" {
				t.Fatalf("list packs = %v", names)
			}
			if err := be.Remove(ctx, Handle{Type: PackFile, Name: "ab01"}); err != nil {
				t.Fatal(err)
			}
			for _, op := range []func() error{
				func() error { _, err := be.Load(ctx, Handle{Type: PackFile, Name: "ab01"}, 0, 0); return err },
				func() error { _, err := be.Stat(ctx, Handle{Type: PackFile, Name: "ab01"}); return err },
				func() error { return be.Remove(ctx, Handle{Type: PackFile, Name: "ab01"}) },
			} {
				if err := op(); !errors.Is(err, ErrNotExist) {
					t.Fatalf("operation on a removed file = %v, want ErrNotExist", err)
				}
			}
			for _, bad := range []Handle{{Type: "etc", Name: "x"}, {Type: PackFile, Name: "../../x"}, {Type: IndexFile}} {
				if err := be.Save(ctx, bad, nil); err == nil {
					t.Fatalf("saving invalid handle %+v succeeded", bad)
				}
			}
		})
	}
}

func TestParseS3Location(t *testing.T) {
	for _, tc := range []struct {
		in                       string
		endpoint, bucket, prefix string
		secure, ok               bool
	}{
		{"s3:host:9000/b/p/q", "host:9000", "b", "p/q", true, true},
		{"s3:http://127.0.0.1:9000/b", "127.0.0.1:9000", "b", "", false, true},
		{"s3:https://s3.example/b/x/", "s3.example", "b", "x", true, true},
		{"s3:host", "", "", "", false, false},
		{"s3:host/", "", "", "", false, false},
	} {
		cfg, err := ParseS3Location(tc.in)
		if (err == nil) != tc.ok {
			t.Errorf("%s: err %v", tc.in, err)
			continue
		}
		if tc.ok && (cfg.Endpoint != tc.endpoint || cfg.Bucket != tc.bucket || cfg.Prefix != tc.prefix || cfg.Secure != tc.secure) {
			t.Errorf("%s: %+v", tc.in, cfg)
		}
	}
}

// TestLocalListSkipsTemporaries checks that List names only repository
// files: not our own temporaries nor the partial files and journals of a
// bulk transfer landing in the directory.
func TestLocalListSkipsTemporaries(t *testing.T) {
	ctx := context.Background()
	be, err := NewLocal(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	if err := be.Create(ctx); err != nil {
		t.Fatal(err)
	}
	if err := be.Save(ctx, Handle{Type: PackFile, Name: "ab01"}, []byte("pack")); err != nil {
		t.Fatal(err)
	}
	if err := be.Save(ctx, Handle{Type: IndexFile, Name: "ix"}, []byte("index")); err != nil {
		t.Fatal(err)
	}
	for _, p := range []string{"data/ab/.holdfast-part.ab02", "data/ab/.holdfast-journal.ab02", "data/ab/.tmp-123", "index/.holdfast-part.iy", "index/.tmp-adopt-1"} {
		if err := os.WriteFile(filepath.Join(be.Dir(), p), []byte("partial"), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	for typ, want := range map[FileType]string{PackFile: "ab01", IndexFile: "ix"} {
		var names []string
		if err := be.List(ctx, typ, func(fi FileInfo) error { names = append(names, fi.Name); return nil }); err != nil {
			t.Fatal(err)
		}
		if len(names) != 1 || names[0] != want {
			t.Errorf("list %s = %v, want [%s]", typ, names, want)
		}
	}
}
