package quickstart

import (
	"bytes"
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// buildHoldfast builds the real holdfast binary once for the test.
func buildHoldfast(t *testing.T) string {
	t.Helper()
	exe := filepath.Join(t.TempDir(), "holdfast")
	cmd := exec.Command("go", "build", "-o", exe, "github.com/holdfast/holdfast/cmd/holdfast")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("building holdfast: %v\n%s", err, out)
	}
	return exe
}

func TestQuickstartBacksUpProtectsAndRestores(t *testing.T) {
	exe := buildHoldfast(t)
	var out bytes.Buffer
	res, err := Run(context.Background(), Options{Exe: exe, Agents: 5, DataSize: 4 << 20}, &out)
	if err != nil {
		t.Fatalf("quickstart: %v\n%s", err, out.String())
	}
	if len(res.Agents) != 5 {
		t.Fatalf("got %d agent statuses, want 5", len(res.Agents))
	}
	for _, st := range res.Agents {
		if st.Cluster != res.Cluster {
			t.Errorf("agent %s in cluster %s, want %s", st.Name, st.Cluster, res.Cluster)
		}
		n := 0
		for _, p := range st.Peers {
			if p.Connected && p.Versions["agent"] != "" && p.Name != st.Name {
				n++
			}
		}
		if n != 4 {
			t.Errorf("agent %s sees %d connected peers with versions, want 4: %+v", st.Name, n, st.Peers)
		}
	}
	b := res.Backup
	if b == nil || !b.Verified {
		t.Fatalf("backup not verified: %+v\n%s", b, out.String())
	}
	if b.Scheme != "2+2" || b.Protection != 2 {
		t.Errorf("scheme %s at protection %d, want 2+2 at 2", b.Scheme, b.Protection)
	}
	if len(b.ShardHolders) < 4 || len(b.PlaintextSeen) != 0 {
		t.Errorf("shards on %v, plaintext seen on %v", b.ShardHolders, b.PlaintextSeen)
	}
	if len(b.Lost) != 3 || b.RestoredFrom != 2 || b.RestoredFiles == 0 {
		t.Errorf("lost %v, restored %d files from %d peers", b.Lost, b.RestoredFiles, b.RestoredFrom)
	}
	if _, err := os.Stat(res.Dir); !os.IsNotExist(err) {
		t.Errorf("temporary state %s left behind (err %v)", res.Dir, err)
	}
}

func TestSameTreeFindsDifferences(t *testing.T) {
	a, b := t.TempDir(), t.TempDir()
	if _, err := makeDemoData(a, 1<<20); err != nil {
		t.Fatal(err)
	}
	if err := sameTree(a, b); err == nil {
		t.Fatal("an empty tree compared equal to the demo data")
	}
	if err := os.CopyFS(b, os.DirFS(a)); err != nil {
		t.Fatal(err)
	}
	os.Remove(filepath.Join(b, "src", "notes-link"))
	os.Symlink("../docs/notes.txt", filepath.Join(b, "src", "notes-link"))
	if err := sameTree(a, b); err != nil {
		t.Fatalf("a copy differs: %v", err)
	}
	p := filepath.Join(b, "docs", "notes.txt")
	data, _ := os.ReadFile(p)
	data[10] ^= 1
	os.WriteFile(p, data, 0o644)
	if err := sameTree(a, b); err == nil || !strings.Contains(err.Error(), "content differs") {
		t.Fatalf("a flipped bit: got %v", err)
	}
}

func TestQuickstartRejectsBadAgentCount(t *testing.T) {
	if _, err := Run(context.Background(), Options{Agents: 2}, &bytes.Buffer{}); err == nil || !strings.Contains(err.Error(), "want 3 to 16") {
		t.Fatalf("2 agents: got %v", err)
	}
}
