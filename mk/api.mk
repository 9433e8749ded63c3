# Regenerates the public API's Go code with Debian's protoc and the pinned
# plugins; the generated code is committed, so builds do not need protoc.
PROTOC_GEN_GO_VERSION := v1.36.12
PROTOC_GEN_CONNECT_VERSION := v1.21.1

.PHONY: proto proto-tools proto-api
proto: proto-api

proto-tools:
	@command -v protoc >/dev/null || apt-get install -y --no-install-recommends protobuf-compiler libprotobuf-dev
	@test -x $(BIN)/protoc-gen-go || GOBIN=$(BIN) $(GO) install google.golang.org/protobuf/cmd/protoc-gen-go@$(PROTOC_GEN_GO_VERSION)
	@test -x $(BIN)/protoc-gen-connect-go || GOBIN=$(BIN) $(GO) install connectrpc.com/connect/cmd/protoc-gen-connect-go@$(PROTOC_GEN_CONNECT_VERSION)

proto-api: proto-tools
	protoc -I . -I /usr/include \
		--plugin=protoc-gen-go=$(BIN)/protoc-gen-go --go_out=. --go_opt=paths=source_relative \
		--plugin=protoc-gen-connect-go=$(BIN)/protoc-gen-connect-go --connect-go_out=. --connect-go_opt=paths=source_relative \
		api/hyper/v1/hyper.proto
