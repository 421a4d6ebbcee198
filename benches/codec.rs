//! Hot paths of the wire codec: decoding the requests every node sends and
//! encoding the replies they read. Run with `cargo bench --bench codec`.

use std::hint::black_box;

use bytes::BytesMut;
use criterion::{Criterion, criterion_group, criterion_main};
use kube_epmd::codec::{
    Alive2, NodeInfo, Request, Response, decode_frame, encode_request, validate_alive2,
};

fn frame(req: &Request) -> Vec<u8> {
    let mut b = BytesMut::new();
    encode_request(req, &mut b);
    b.to_vec()
}

fn alive() -> Alive2 {
    Alive2::erlang_node("ejabberd", 4200)
}

fn decode(c: &mut Criterion) {
    let mut g = c.benchmark_group("decode");
    let pp = frame(&Request::PortPlease2 {
        name: b"ejabberd".to_vec(),
    });
    g.bench_function("port_please2", |b| b.iter(|| decode_frame(black_box(&pp))));
    let al = frame(&Request::Alive2(alive()));
    g.bench_function("alive2", |b| b.iter(|| decode_frame(black_box(&al))));
    g.bench_function("alive2+validate", |b| {
        b.iter(|| match decode_frame(black_box(&al)) {
            Ok(Request::Alive2(a)) => validate_alive2(&a).map(str::len).ok(),
            _ => None,
        })
    });
    let names = frame(&Request::Names);
    g.bench_function("names", |b| b.iter(|| decode_frame(black_box(&names))));
    let garbage = vec![0x0b, 0xf4, b'z', 0xff, 0xfe];
    g.bench_function("garbage", |b| b.iter(|| decode_frame(black_box(&garbage))));
    g.finish();
}

fn encode(c: &mut Criterion) {
    let mut g = c.benchmark_group("encode");
    let info = NodeInfo::erlang_node("ejabberd", 4200);
    let mut out = BytesMut::with_capacity(256);
    g.bench_function("port2_hit", |b| {
        b.iter(|| {
            out.clear();
            Response::Port2Hit(black_box(&info)).encode(&mut out);
            out.len()
        })
    });
    g.bench_function("alive2_x_resp", |b| {
        b.iter(|| {
            out.clear();
            Response::Alive2 {
                ok: true,
                creation: black_box(1_700_000_000),
                highest_version: 6,
            }
            .encode(&mut out);
            out.len()
        })
    });
    g.bench_function("names_10_lines", |b| {
        b.iter(|| {
            out.clear();
            Response::PortHeader(4369).encode(&mut out);
            for i in 0..10u16 {
                Response::NameLine {
                    name: black_box("ejabberd"),
                    port: 4200 + i,
                }
                .encode(&mut out);
            }
            out.len()
        })
    });
    g.finish();
}

criterion_group!(benches, decode, encode);
criterion_main!(benches);
