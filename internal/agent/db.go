package agent

import (
	"encoding/json"
	"fmt"
	"time"

	bolt "go.etcd.io/bbolt"
)

// Buckets of the agent's metadata database. Feature services create their
// own buckets, named after the service.
var (
	bucketPeers = []byte("peers")
	bucketMeta  = []byte("meta")
)

type peerRecord struct {
	Address  string    `json:"address"`
	LastSeen time.Time `json:"last_seen"`
}

func initDB(db *bolt.DB) error {
	return db.Update(func(tx *bolt.Tx) error {
		for _, b := range [][]byte{bucketPeers, bucketMeta} {
			if _, err := tx.CreateBucketIfNotExists(b); err != nil {
				return fmt.Errorf("creating bucket %s: %w", b, err)
			}
		}
		return nil
	})
}

func (a *Agent) savePeer(name, addr string) error {
	v, _ := json.Marshal(peerRecord{Address: addr, LastSeen: time.Now()})
	return a.db.Update(func(tx *bolt.Tx) error {
		return tx.Bucket(bucketPeers).Put([]byte(name), v)
	})
}

func (a *Agent) loadPeerAddr(name string) (string, error) {
	var rec peerRecord
	err := a.db.View(func(tx *bolt.Tx) error {
		v := tx.Bucket(bucketPeers).Get([]byte(name))
		if v == nil {
			return fmt.Errorf("peer %q unknown", name)
		}
		return json.Unmarshal(v, &rec)
	})
	return rec.Address, err
}

// rememberedPeers returns the addresses of peers seen in earlier runs, so a
// restarted agent reconnects to the cluster it knew.
func (a *Agent) rememberedPeers() []string {
	var out []string
	_ = a.db.View(func(tx *bolt.Tx) error {
		return tx.Bucket(bucketPeers).ForEach(func(k, v []byte) error {
			var rec peerRecord
			if json.Unmarshal(v, &rec) == nil && rec.Address != "" {
				out = append(out, rec.Address)
			}
			return nil
		})
	})
	return out
}
