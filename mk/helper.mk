# hyper-suidhelper: the setuid-root helper (internal/suid).
#
#   make helper           build the release binary into bin/
#   make install-helper   install it root:root 4755 at [tools] suidhelper of
#                         the config (default /usr/local/bin/hyper-suidhelper)
#   make test-helper      its unit, fuzz-seed and end-to-end tests (e2e: root)
#   make fuzz-helper      a short fuzz run of its argv and path validators
#
# The config path is compiled in; packagers may change it here, nothing can
# at run time.
HELPER_CONFIG  ?= /etc/hyper/config.toml
HELPER_VERSION ?= $(shell git describe --always --dirty 2>/dev/null || echo dev)
HELPER_BIN     ?= $(BIN)/hyper-suidhelper
HELPER_LDFLAGS := -X main.configPath=$(HELPER_CONFIG) -X main.version=$(HELPER_VERSION)
HELPER_DEST    ?= $(or $(shell awk -F'"' '/^[ \t]*\[/ { t = ($$0 ~ /^[ \t]*\[tools\]/) } t && /^[ \t]*suidhelper[ \t]*=/ { print $$2 }' $(HELPER_CONFIG) 2>/dev/null),/usr/local/bin/hyper-suidhelper)
FUZZTIME       ?= 10s

.PHONY: helper install-helper test-helper fuzz-helper

helper:
	CGO_ENABLED=0 $(GO) build -trimpath -ldflags '$(HELPER_LDFLAGS)' -o $(HELPER_BIN) ./cmd/hyper-suidhelper

install-helper: helper
	test -d $(dir $(HELPER_DEST)) || install -d -o root -g root -m 0755 $(dir $(HELPER_DEST))
	install -o root -g root -m 4755 $(HELPER_BIN) $(HELPER_DEST)
	@echo "installed $(HELPER_DEST) (root:root 4755); check it with: $(HELPER_DEST) sys-test"

test-helper:
	$(GO) test -count=1 ./internal/suid/... ./internal/helper/...

fuzz-helper:
	$(GO) test -run='^$$' -fuzz='^FuzzParse$$' -fuzztime=$(FUZZTIME) ./internal/suid
	$(GO) test -run='^$$' -fuzz='^FuzzOpenBeneath$$' -fuzztime=$(FUZZTIME) ./internal/suid
