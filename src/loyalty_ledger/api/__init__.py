"""gRPC servicers: proto <-> ledger translation, validation and error mapping."""
