"""Clients for the cxr-triage service: gRPC library, CLI commands, evaluation."""
