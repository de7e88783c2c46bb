//! Micro-benchmarks of the sans-IO core: masking, frame decode and encode,
//! handshake parsing, and deflate. Run with `cargo bench`; CI only compiles
//! them (`cargo bench --no-run`). Numbers and the machine they came from are
//! in BENCHMARKS.md.

use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use rust_chat::protocol::frame::{self, DecodeRules, FrameHeader, OpCode, WebSocketFrame};
use rust_chat::protocol::handshake;
use rust_chat::protocol::{apply_mask, apply_mask_naive};
use std::hint::black_box;

fn masking(c: &mut Criterion) {
    let mut group = c.benchmark_group("mask");
    for size in [32usize, 1024, 64 * 1024] {
        let mut data = vec![0x5Au8; size];
        group.throughput(Throughput::Bytes(size as u64));
        group.bench_function(format!("word/{size}"), |b| b.iter(|| apply_mask(black_box(&mut data), [1, 2, 3, 4], 1)));
        group.bench_function(format!("naive/{size}"), |b| {
            b.iter(|| apply_mask_naive(black_box(&mut data), [1, 2, 3, 4], 1))
        });
    }
    group.finish();
}

fn masked_frame(size: usize) -> Vec<u8> {
    let header = FrameHeader { mask: Some([1, 2, 3, 4]), ..FrameHeader::new(OpCode::Binary, size as u64) };
    let mut out = Vec::new();
    WebSocketFrame { header, payload: vec![0x61; size] }.encode(&mut out);
    out
}

fn codec(c: &mut Criterion) {
    let rules = DecodeRules::server(16 << 20);
    let mut group = c.benchmark_group("frame");
    for size in [32usize, 64 * 1024] {
        let wire = masked_frame(size);
        group.throughput(Throughput::Bytes(size as u64));
        group.bench_function(format!("decode_header/{size}"), |b| {
            b.iter(|| FrameHeader::decode(black_box(&wire), &rules).unwrap())
        });
        group.bench_function(format!("decode_whole/{size}"), |b| {
            b.iter_batched(|| wire.clone(), |mut buf| frame::decode(&mut buf, &rules).unwrap(), BatchSize::SmallInput)
        });
        let payload = vec![0x61u8; size];
        let mut out = Vec::with_capacity(size + 16);
        group.bench_function(format!("encode/{size}"), |b| {
            b.iter(|| {
                out.clear();
                frame::encode(&mut out, OpCode::Binary, black_box(&payload));
            })
        });
    }
    group.finish();
}

fn handshake_parse(c: &mut Criterion) {
    let request = b"GET /chat HTTP/1.1\r\nHost: 127.0.0.1:10000\r\nConnection: Upgrade\r\nPragma: no-cache\r\n\
        Cache-Control: no-cache\r\nUser-Agent: Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 Chrome/156.0 Safari/537.36\r\n\
        Upgrade: websocket\r\nOrigin: http://127.0.0.1:10000\r\nSec-WebSocket-Version: 13\r\n\
        Accept-Encoding: gzip, deflate, br\r\nAccept-Language: en-US,en;q=0.9\r\n\
        Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
        Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits\r\n\r\n";
    let mut group = c.benchmark_group("handshake");
    group.throughput(Throughput::Bytes(request.len() as u64));
    group.bench_function("parse_and_validate", |b| {
        b.iter(|| {
            let mut headers = [httparse::EMPTY_HEADER; handshake::MAX_HEADERS];
            let (req, _) = handshake::parse_request(black_box(request), &mut headers, 8192).unwrap().unwrap();
            req.validate_upgrade().unwrap()
        })
    });
    group.finish();
}

fn deflate(c: &mut Criterion) {
    let text: Vec<u8> = b"{\"type\":\"message\",\"room\":\"lobby\",\"nick\":\"guest-17\",\"text\":\"hello there\"} "
        .repeat(16)
        .to_vec();
    let mut group = c.benchmark_group("deflate");
    group.throughput(Throughput::Bytes(text.len() as u64));
    let mut deflater = rust_chat::protocol::deflate::Deflater::new(15);
    let mut out = Vec::new();
    group.bench_function("compress_1k_json", |b| {
        b.iter(|| {
            out.clear();
            deflater.compress(black_box(&text), &mut out, true);
        })
    });
    let mut compressed = Vec::new();
    rust_chat::protocol::deflate::Deflater::new(15).compress(&text, &mut compressed, true);
    let mut inflater = rust_chat::protocol::deflate::Inflater::new();
    group.bench_function("inflate_1k_json", |b| {
        b.iter(|| {
            let mut n = 0;
            inflater
                .inflate(black_box(&compressed), 1 << 20, &mut |piece| {
                    n += piece.len();
                    Ok(())
                })
                .unwrap();
            inflater.finish_message(1 << 20, true, &mut |_| Ok(())).unwrap();
            n
        })
    });
    group.finish();
}

criterion_group!(benches, masking, codec, handshake_parse, deflate);
criterion_main!(benches);
