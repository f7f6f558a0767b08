//! What the shim does per pod before the VM starts, and what the agent does at boot: decode the
//! annotation, validate, digest, write and read the block image. Run with
//! `cargo bench -p coffer-initdata`.

use coffer_initdata::{annotation, image, InitData, Limits, TeeField};
use criterion::{black_box, criterion_group, criterion_main, Criterion, Throughput};

const SEED: &[u8] = include_bytes!("../tests/data/seed-initdata.toml");

/// A document with a large policy (about 1 MiB), the size a generated Rego policy can reach.
fn large() -> Vec<u8> {
    let mut doc = String::from("version = \"0.1.0\"\nalgorithm = \"sha384\"\n[data]\n\"policy.rego\" = '''\npackage agent_policy\n");
    let mut i = 0;
    while doc.len() < 1 << 20 {
        doc.push_str(&format!("default Request{i} := true\n"));
        i += 1;
    }
    doc.push_str("'''\n");
    doc.into_bytes()
}

fn bench(c: &mut Criterion) {
    let limits = Limits::default();
    for (name, doc) in [("seed", SEED.to_vec()), ("1MiB", large())] {
        let value = annotation::encode(&doc);
        let img = image::write(&doc);
        let mut g = c.benchmark_group(name);
        g.throughput(Throughput::Bytes(doc.len() as u64));
        g.bench_function("parse+digest", |b| {
            b.iter(|| InitData::parse(black_box(doc.clone())).map(|d| d.digest()))
        });
        g.bench_function("annotation decode+validate+bind", |b| {
            b.iter(|| {
                annotation::decode(black_box(&value), &limits)
                    .map(|d| d.digest().bind(TeeField::TdxMrConfigId))
            })
        });
        g.bench_function("annotation encode", |b| {
            b.iter(|| annotation::encode(black_box(&doc)))
        });
        g.bench_function("image write", |b| b.iter(|| image::write(black_box(&doc))));
        g.bench_function("image read", |b| {
            b.iter(|| image::read(black_box(&img), &limits))
        });
        g.finish();
    }

    // A gzip bomb (64 MiB of zeros) must be refused after inflating no more than the limit.
    let bomb = annotation::encode(&vec![0u8; 64 << 20]);
    let bomb_limits = Limits {
        max_encoded: 1 << 20,
        ..Limits::default()
    };
    c.bench_function("gzip bomb refused", |b| {
        b.iter(|| annotation::decode_bytes(black_box(&bomb), &bomb_limits).is_err())
    });
}

criterion_group!(benches, bench);
criterion_main!(benches);
