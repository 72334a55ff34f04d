"""Generated protobuf and gRPC code for package reelvault.v1 (`make protos`; do not edit)."""
