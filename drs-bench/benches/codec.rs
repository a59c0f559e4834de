//! Encode and decode of one command per protocol, 64 B and 16 KiB bodies.
//!
//! ```text
//! cargo bench -p drsrpc-bench --bench codec
//! ```

#![allow(missing_docs)]

use std::hint::black_box;

use bytes::BytesMut;
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use drs_core::{OutBody, Outgoing, Protocol};
use drs_protocol_json::Json;
use drs_protocol_msgpack::MsgPack;

fn codecs(c: &mut Criterion) {
    let protocols: [(&str, &dyn Protocol); 2] = [("json", &Json), ("msgpack", &MsgPack)];
    for (name, protocol) in protocols {
        for size in [64usize, 16 * 1024] {
            let body = "x".repeat(size);
            let out = Outgoing::new("echo")
                .key(Some("123456"))
                .body(OutBody::Value(&body));
            let mut frame = BytesMut::new();
            protocol.encode(&out, &mut frame).unwrap();
            let frame = frame.freeze();
            let mut group = c.benchmark_group(format!("{name}/{size}"));
            group.throughput(Throughput::Bytes(frame.len() as u64));
            group.bench_function("encode", |b| {
                let mut buf = BytesMut::with_capacity(frame.len() * 2);
                b.iter(|| {
                    buf.clear();
                    protocol.encode(black_box(&out), &mut buf).unwrap();
                })
            });
            group.bench_function("decode", |b| {
                b.iter(|| protocol.decode(black_box(frame.clone())).unwrap())
            });
            group.bench_function("decode+body", |b| {
                b.iter(|| {
                    let cmd = protocol.decode(black_box(frame.clone())).unwrap();
                    cmd.body.deserialize::<String>().unwrap()
                })
            });
            let cmd = protocol.decode(frame.clone()).unwrap();
            let reply = Outgoing::new("drs.response")
                .key(Some("123456"))
                .body(OutBody::Raw(&cmd.body));
            group.bench_function("encode reply, body passed through", |b| {
                let mut buf = BytesMut::with_capacity(frame.len() * 2);
                b.iter(|| {
                    buf.clear();
                    protocol.encode(black_box(&reply), &mut buf).unwrap();
                })
            });
            group.finish();
        }
    }
}

criterion_group!(benches, codecs);
criterion_main!(benches);
