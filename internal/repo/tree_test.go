package repo

import (
	"reflect"
	"testing"
	"time"
)

// TestNodeEqualSeesEveryField changes each field of a node in turn (found
// by reflection, so a field added to Node later is covered too) and checks
// that Node.equal tells the copy from the original: backup reuses a
// directory's earlier tree when all its nodes are equal.
func TestNodeEqualSeesEveryField(t *testing.T) {
	sub := ID{7}
	base := Node{Name: "a", Type: NodeFile, Mode: 0o644, UID: 1, GID: 2, User: "u", Group: "g", Size: 3,
		ModTime: time.Unix(10, 5), ChangeTime: time.Unix(11, 6), Inode: 4, Device: 5, Links: 1, Rdev: 6,
		LinkTarget: "t", Xattrs: map[string][]byte{"user.k": []byte("v")}, Content: []ID{{1}}, Subtree: &sub}
	cp := base
	if !base.equal(&cp) || !sameNodes([]*Node{&base}, []*Node{&cp}) {
		t.Fatal("a node differs from its copy")
	}
	bt := reflect.TypeOf(base)
	for i := 0; i < bt.NumField(); i++ {
		changed := base
		f := reflect.ValueOf(&changed).Elem().Field(i)
		switch v := f.Addr().Interface().(type) {
		case *string:
			*v += "x"
		case *uint32:
			*v++
		case *uint64:
			*v++
		case *int64:
			*v++
		case *time.Time:
			*v = v.Add(time.Nanosecond)
		case *map[string][]byte:
			*v = map[string][]byte{"user.k": []byte("w")}
		case *[]ID:
			*v = []ID{{2}}
		case **ID:
			other := ID{8}
			*v = &other
		default:
			t.Fatalf("field %s of type %s: teach this test (and Node.equal) about it", bt.Field(i).Name, f.Type())
		}
		if base.equal(&changed) || changed.equal(&base) {
			t.Errorf("Node.equal misses a change of %s", bt.Field(i).Name)
		}
	}
	if sameNodes([]*Node{&base}, []*Node{&base, &cp}) || base.equal(nil) {
		t.Error("node lists of different lengths, or a node and nil, compared equal")
	}
}
