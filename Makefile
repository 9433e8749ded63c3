# Hyper's build. `make demo` and `make test` are the two commands README.md
# promises to work on a fresh Debian machine as root.
SHELL := /bin/bash
GO ?= go
BIN := $(CURDIR)/bin
export GOTOOLCHAIN := local

.PHONY: all build test lint
all: build

build:
	CGO_ENABLED=0 $(GO) build -trimpath -o $(BIN)/ ./cmd/...

lint:
	gofmt -l . | (! grep .)
	$(GO) vet ./...

# Each area adds its own targets in mk/<area>.mk.
include $(wildcard mk/*.mk)
