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

func TestQuickstartFormsClusterOfRealAgents(t *testing.T) {
	exe := buildHoldfast(t)
	var out bytes.Buffer
	res, err := Run(context.Background(), Options{Exe: exe, Agents: 3}, &out)
	if err != nil {
		t.Fatalf("quickstart: %v\n%s", err, out.String())
	}
	if len(res.Agents) != 3 {
		t.Fatalf("got %d agent statuses, want 3", len(res.Agents))
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
		if n != 2 {
			t.Errorf("agent %s sees %d connected peers with versions, want 2: %+v", st.Name, n, st.Peers)
		}
	}
	if !strings.Contains(out.String(), "connected (mTLS)") {
		t.Errorf("output lacks the status tables:\n%s", out.String())
	}
	if _, err := os.Stat(res.Dir); !os.IsNotExist(err) {
		t.Errorf("temporary state %s left behind (err %v)", res.Dir, err)
	}
}

func TestQuickstartRejectsBadAgentCount(t *testing.T) {
	if _, err := Run(context.Background(), Options{Agents: 1}, &bytes.Buffer{}); err == nil || !strings.Contains(err.Error(), "want 2 to 16") {
		t.Fatalf("1 agent: got %v", err)
	}
}
