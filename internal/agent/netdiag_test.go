package agent

import (
	"testing"
	"time"

	"github.com/holdfast/holdfast/internal/netdiag"
)

// TestNetdiagLogInStateDir: services record into <state>/netdiag through
// Agent.Netdiag, one shared log, flushed when the agent stops, where
// 'holdfast netdiag report' looks by default.
func TestNetdiagLogInStateDir(t *testing.T) {
	dir := t.TempDir()
	if _, err := Init(dir, InitOptions{Name: "solo", Listen: freeAddr(t)}); err != nil {
		t.Fatal(err)
	}
	a, stop := runAgent(t, dir)
	sink := a.Netdiag()
	if sink == nil {
		t.Fatal("no netdiag sink")
	}
	if again := a.Netdiag(); again != sink {
		t.Fatal("Netdiag opened a second log")
	}
	now := time.Now().UnixNano()
	for i := uint64(1); i <= 3; i++ {
		sink.Record(netdiag.Record{Time: now, Kind: netdiag.KindMsg, Conn: "c1", Peer: "p",
			Msg: &netdiag.MsgRecord{ID: i, Size: 100, SentAt: now, AckedAt: now + 1000, Transit: 1000, Network: 1000}})
	}
	stop()
	var ids []uint64
	if _, err := netdiag.ReadLog(netdiag.DirIn(dir), func(r netdiag.Record) {
		if r.Msg != nil {
			ids = append(ids, r.Msg.ID)
		}
	}); err != nil {
		t.Fatal(err)
	}
	if len(ids) != 3 || ids[0] != 1 || ids[2] != 3 {
		t.Fatalf("log holds messages %v, want 1 2 3", ids)
	}
}
