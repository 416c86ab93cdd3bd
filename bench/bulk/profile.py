"""Split a CPU profile of the bulk data path into its parts.

Input: `go tool pprof -top -cum -nodecount 1000` output. Parts are taken as
cumulative times of the functions named below (they do not nest in one
another); the rest is reported as "other". Test-data generation
(crypto/rand) is left out.
"""
import re
import sys

parts = [
    ("file write (pwrite into page cache)", ["syscall.pwrite"]),
    ("file read (pread)", ["syscall.pread"]),
    ("BLAKE3 block checksums", ["github.com/zeebo/blake3.Sum256"]),
    ("TLS encrypt (AES-GCM seal)", ["crypto/internal/fips140/aes/gcm.seal"]),
    ("TLS decrypt (AES-GCM open)", ["crypto/internal/fips140/aes/gcm.open"]),
    ("socket writes", ["net.(*conn).Write"]),
    ("socket reads", ["net.(*conn).Read"]),
    ("garbage collection", ["runtime.gcBgMarkWorker"]),
]
unit = {"ms": 1e-3, "s": 1.0, "us": 1e-6, "µs": 1e-6, "min": 60.0}
cum = {}
total = None
for line in sys.stdin:
    m = re.search(r"Total samples = ([\d.]+)(ms|s|min)", line)
    if m:
        total = float(m.group(1)) * unit[m.group(2)]
    m = re.match(r"\s*[\d.]+(?:ms|s|us|µs|min)?\s+[\d.]+%\s+[\d.]+%\s+([\d.]+)(ms|s|us|µs|min)\s+[\d.]+%\s+(.*)", line)
    if m:
        cum[m.group(3).replace(" (inline)", "").strip()] = float(m.group(1)) * unit[m.group(2)]
rand = cum.get("crypto/rand.Read", 0.0)
total = (total or 0.0) - rand
acc = 0.0
for name, fns in parts:
    v = sum(cum.get(f, 0.0) for f in fns)
    acc += v
    print("  %-38s %5.1f%%" % (name, 100 * v / total if total else 0))
print("  %-38s %5.1f%%" % ("other (scheduler, framing, acks...)", 100 * (total - acc) / total if total else 0))
