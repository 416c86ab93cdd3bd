package peer

import (
	"errors"
	"fmt"
	"sort"
)

// Candidate is a peer that could receive shards.
type Candidate struct {
	Name string `json:"name"`
	// Free is how many bytes the peer can still lend.
	Free int64 `json:"free"`
	// Domain is the peer's failure domain (its "zone" label, else its
	// name).
	Domain string `json:"domain"`
	// Healthy is false for a peer that is unreachable or failed a proof.
	Healthy bool `json:"healthy"`
}

// ErrNoPlacement is returned when no eligible peer can take a shard.
var ErrNoPlacement = errors.New("no peer can take the shard")

// Place chooses a peer for each of need shards of size bytes. holding
// counts shards of the same file each peer already holds, and domains the
// shards per failure domain; both are updated. A shard goes to the
// healthy peer with room that holds the fewest shards of this file, then
// whose failure domain holds the fewest, then with the most free space, so
// shards land on distinct peers and domains while there are enough of
// them. exclude lists peers that must get no shard.
func Place(cands []Candidate, need int, size int64, holding, domains map[string]int, exclude map[string]bool) ([]string, error) {
	free := map[string]int64{}
	var eligible []Candidate
	for _, c := range cands {
		if c.Healthy && !exclude[c.Name] {
			eligible = append(eligible, c)
			free[c.Name] = c.Free
		}
	}
	out := make([]string, 0, need)
	for range need {
		best := -1
		for i, c := range eligible {
			if free[c.Name] < size {
				continue
			}
			if best < 0 || better(c, eligible[best], holding, domains, free) {
				best = i
			}
		}
		if best < 0 {
			return out, fmt.Errorf("%w: %d bytes, %d healthy peers", ErrNoPlacement, size, len(eligible))
		}
		c := eligible[best]
		out = append(out, c.Name)
		holding[c.Name]++
		domains[c.Domain]++
		free[c.Name] -= size
	}
	return out, nil
}

func better(a, b Candidate, holding, domains map[string]int, free map[string]int64) bool {
	if holding[a.Name] != holding[b.Name] {
		return holding[a.Name] < holding[b.Name]
	}
	if domains[a.Domain] != domains[b.Domain] {
		return domains[a.Domain] < domains[b.Domain]
	}
	if free[a.Name] != free[b.Name] {
		return free[a.Name] > free[b.Name]
	}
	return a.Name < b.Name
}

// SortCandidates orders candidates by name, for stable output.
func SortCandidates(c []Candidate) {
	sort.Slice(c, func(i, j int) bool { return c[i].Name < c[j].Name })
}
