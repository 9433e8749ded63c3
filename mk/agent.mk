# Regenerates the guest agent protocol's Go code (api/agent/v1) with Debian's
# protoc and the pinned plugins in ./bin (see proto-tools in api.mk). The
# generated code is committed, so builds do not need protoc.
.PHONY: proto-agent
proto: proto-agent

proto-agent: proto-tools
	protoc -I . -I /usr/include \
		--plugin=protoc-gen-go=$(BIN)/protoc-gen-go --go_out=. --go_opt=paths=source_relative \
		--plugin=protoc-gen-connect-go=$(BIN)/protoc-gen-connect-go --connect-go_out=. --connect-go_opt=paths=source_relative \
		api/agent/v1/agent.proto
