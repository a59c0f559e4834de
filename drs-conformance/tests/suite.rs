//! Every behaviour, for every transport × protocol pair.

use drs_conformance::{conformance_suite, Net, Pair, Proto};

conformance_suite!(memory_json, Pair::new(Net::Memory, Proto::Json));
conformance_suite!(tcp_json, Pair::new(Net::Tcp, Proto::Json));
