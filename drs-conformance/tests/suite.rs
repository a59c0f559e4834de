//! Every behaviour, for every transport × protocol pair.

use drs_conformance::{conformance_suite, Net, Pair, Proto};

conformance_suite!(memory_json, Pair::new(Net::Memory, Proto::Json));
conformance_suite!(memory_msgpack, Pair::new(Net::Memory, Proto::MsgPack));
conformance_suite!(tcp_json, Pair::new(Net::Tcp, Proto::Json));
conformance_suite!(tcp_msgpack, Pair::new(Net::Tcp, Proto::MsgPack));
conformance_suite!(ws_json, Pair::new(Net::Ws, Proto::Json));
conformance_suite!(ws_msgpack, Pair::new(Net::Ws, Proto::MsgPack));
conformance_suite!(ipc_json, Pair::new(Net::Ipc, Proto::Json));
conformance_suite!(ipc_msgpack, Pair::new(Net::Ipc, Proto::MsgPack));
conformance_suite!(tls_json, Pair::new(Net::Tls, Proto::Json));
conformance_suite!(tls_msgpack, Pair::new(Net::Tls, Proto::MsgPack));
conformance_suite!(wss_json, Pair::new(Net::Wss, Proto::Json));
conformance_suite!(wss_msgpack, Pair::new(Net::Wss, Proto::MsgPack));
conformance_suite!(nats_json, Pair::new(Net::Nats, Proto::Json));
conformance_suite!(nats_msgpack, Pair::new(Net::Nats, Proto::MsgPack));
conformance_suite!(redis_json, Pair::new(Net::Redis, Proto::Json));
conformance_suite!(redis_msgpack, Pair::new(Net::Redis, Proto::MsgPack));
