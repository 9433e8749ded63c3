# Hyper's build. README.md promises two commands on a fresh Debian machine,
# as root: `make demo` (clone to a running node) and `make test` (the whole
# suite). Both install what they need.
SHELL := /bin/bash
GO ?= go
BIN := $(CURDIR)/bin
PREFIX ?= /usr/local
export GOTOOLCHAIN := local
export CGO_ENABLED := 0

VERSION ?= $(shell git describe --always --dirty 2>/dev/null || echo dev)
LDFLAGS := -X github.com/hypervm/hyper/internal/daemon.Version=$(VERSION)
# hyper-agent rides in every guest's initramfs, which the guest kernel
# unpacks at each boot (about 9 ms per MiB under TCG): no symbol table or
# DWARF, 4 MiB less. Its panics still print symbolised stacks.
AGENT_LDFLAGS := -s -w
STATICCHECK_VERSION := v0.8.2

# Packages whose tests drive the built binaries; they find them in $(BIN).
export HYPER_TEST_BIN := $(BIN)

.PHONY: all build deps test test-go lint install demo demo-stop clean
all: build

build:
	$(GO) build -trimpath -ldflags '$(LDFLAGS)' -o $(BIN)/ ./cmd/hyperd ./cmd/hyper
	$(GO) build -trimpath -ldflags '$(AGENT_LDFLAGS)' -o $(BIN)/ ./cmd/hyper-agent

deps:
	hack/deps.sh

# The whole suite, as CI runs it: packages, a throwaway PostgreSQL so the
# store suite runs on both engines, then every test.
test: deps build helper
	@out=$$(hack/postgres.sh start /tmp/hyper-test-pg) && url=$${out##*$$'\n'} && \
	  case "$$url" in postgres://*) ;; *) echo "no PostgreSQL URL from hack/postgres.sh: $$out"; exit 1;; esac && \
	  echo "PostgreSQL for tests: $$url" && \
	  HYPER_TEST_POSTGRES_URL=$$url $(GO) test -p 2 -timeout 40m -count=1 ./...

lint:
	@out=$$(gofmt -l $$(git ls-files '*.go')); if [ -n "$$out" ]; then echo "gofmt:"; echo "$$out"; exit 1; fi
	$(GO) vet ./...
	$(GO) run honnef.co/go/tools/cmd/staticcheck@$(STATICCHECK_VERSION) ./...

install: build helper install-helper
	install -m 0755 $(BIN)/hyperd $(BIN)/hyper $(BIN)/hyper-agent $(PREFIX)/bin/

# Clone to a running node: packages, build, install, the hyper user, a
# default root-owned config, hyperd started as that user, and the result.
demo: deps install
	hack/demo.sh

demo-stop:
	hack/demo.sh stop

clean:
	rm -rf $(BIN)

# Each area adds its own targets in mk/<area>.mk.
include $(wildcard mk/*.mk)
