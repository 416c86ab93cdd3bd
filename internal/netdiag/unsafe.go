package netdiag

import "unsafe"

// unsafePointer returns the address of b's first byte; b must be non-empty
// and large enough for the structure it is cast to.
func unsafePointer(b []byte) unsafe.Pointer { return unsafe.Pointer(&b[0]) }
