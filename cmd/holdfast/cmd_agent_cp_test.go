package main

import (
	"bytes"
	"crypto/rand"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestCpToAgent copies a file with `holdfast cp` into a running agent's
// inbox over the cluster's mTLS, and checks that the client is not taken
// for a peer agent.
func TestCpToAgent(t *testing.T) {
	root := t.TempDir()
	a, client := filepath.Join(root, "a"), filepath.Join(root, "client")
	addrA := freePort(t)
	if r := run(t, "cluster", "init", "--state", a, "--name", "a", "--listen", addrA); r.code != 0 {
		t.Fatal(r.stderr)
	}
	startAgentProc(t, a)
	tok := strings.TrimSpace(run(t, "cluster", "token", "--state", a).stdout)
	if r := run(t, "cluster", "join", addrA, "--token", tok, "--state", client, "--name", "laptop"); r.code != 0 {
		t.Fatal(r.stderr)
	}
	data := make([]byte, 3<<20+17)
	rand.Read(data)
	src := filepath.Join(root, "blob.bin")
	if err := os.WriteFile(src, data, 0o640); err != nil {
		t.Fatal(err)
	}
	if r := run(t, "cp", "--state", client, "--no-progress", "--streams", "3", src, addrA+":/dropped/blob.bin"); r.code != 0 {
		t.Fatalf("cp to agent: exit %d\n%s", r.code, r.stderr)
	}
	got, err := os.ReadFile(filepath.Join(a, "inbox", "dropped", "blob.bin"))
	if err != nil || !bytes.Equal(got, data) {
		t.Fatalf("file in the agent's inbox: %v (len %d, want %d)", err, len(got), len(data))
	}
	// A stranger outside the cluster is refused.
	other := filepath.Join(root, "other")
	run(t, "cluster", "init", "--state", other, "--name", "x", "--listen", freePort(t))
	if r := run(t, "cp", "--state", other, "--no-progress", src, addrA+":/x.bin"); r.code == 0 {
		t.Fatal("cp from another cluster's node succeeded")
	}
	if _, err := os.Stat(filepath.Join(a, "inbox", "x.bin")); err == nil {
		t.Fatal("a refused copy left a file behind")
	}
	var st struct{ Peers []struct{ Name string } }
	json.Unmarshal([]byte(run(t, "status", "--state", a, "--json").stdout), &st)
	for _, p := range st.Peers {
		if p.Name == "laptop" {
			t.Fatalf("the cp client is listed as a peer agent: %+v", st.Peers)
		}
	}
}
