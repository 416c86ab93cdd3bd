# holdfast build and test entry points.
#
#   make test   installs what the tests need (Debian packages) when missing,
#               then runs go vet and the whole test suite. CI runs exactly this.
#   make build  builds ./holdfast
#   make fuzz   runs each fuzzer for FUZZTIME (default 20s)

GO        ?= go
FUZZTIME  ?= 20s
VERSION   ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
COMMIT    ?= $(shell git rev-parse HEAD 2>/dev/null)
LDFLAGS   := -X github.com/holdfast/holdfast/internal/buildinfo.Version=$(VERSION) -X github.com/holdfast/holdfast/internal/buildinfo.Commit=$(COMMIT)

.PHONY: all build test deps vet unit fuzz clean

all: build

build:
	$(GO) build -ldflags "$(LDFLAGS)" -o holdfast ./cmd/holdfast

deps:
	bash scripts/install-test-deps.sh

vet:
	@test -z "$$(gofmt -l $$(git ls-files '*.go'))" || { echo "gofmt: these files need formatting:"; gofmt -l $$(git ls-files '*.go'); exit 1; }
	$(GO) vet ./...

# One package at a time: the lab tests (bulk, slo, netdiag, cdp, pool) time
# real TCP through a userspace WAN emulator, which another package's lab
# running at the same moment on two cores would starve (an slo test failed
# that way); serial, the suite still takes a few minutes.
test: deps vet
	$(GO) test -count=1 -p 1 -timeout 20m ./...

fuzz:
	bash scripts/fuzz-all.sh $(FUZZTIME)

clean:
	rm -f holdfast
