//! The feature shard format (`pal_models::formats::feature_shards`): every storage dtype reads
//! back what was written across shard boundaries; damage, mismatched encoders, incomplete and
//! malformed indexes are refused with the file named.

use std::path::Path;

use candle_core::{Device, Tensor};
use pal_models::formats::feature_shards::{
    FeatureDtype, FeatureShardSet, ShardEncoder, ShardIndex, ShardRecord, ShardWriter, INDEX_FILE,
};
use pal_models::text::chat_template::Message;
fn record(tokens: usize) -> ShardRecord {
    ShardRecord {
        audio: "a.wav".into(),
        origin: "m.jsonl:1".into(),
        seconds: 0.5,
        messages: vec![Message {
            role: "assistant".into(),
            content: "seven".into(),
        }],
        tokens: vec![tokens],
    }
}

fn encoder(dim: usize) -> ShardEncoder {
    ShardEncoder {
        name: "e".into(),
        id: "e:1".into(),
        dim,
        config: serde_json::Value::Null,
    }
}

/// Writes 7 records of 1..=7 tokens (values i * 0.37 - 3) into shards of `target` bytes.
fn write_set(dir: &Path, dtype: FeatureDtype, target: usize) -> Vec<Tensor> {
    let index = ShardIndex::new(vec![encoder(5)], dtype, serde_json::json!({}));
    let mut writer = ShardWriter::new(dir, index, target).unwrap();
    let mut written = vec![];
    for r in 0..7 {
        let n = r + 1;
        let values: Vec<f32> = (0..n * 5).map(|i| (i + r) as f32 * 0.37 - 3.0).collect();
        let t = Tensor::from_vec(values, (n, 5), &Device::Cpu).unwrap();
        writer.push(r, record(0), std::slice::from_ref(&t)).unwrap();
        written.push(t);
    }
    let index = writer.finish().unwrap();
    assert!(index.complete && index.records == 7 && index.tokens == vec![28]);
    written
}

#[test]
fn every_dtype_reads_back_what_was_written_across_shards() {
    // Relative error: exact, half an ulp of f16 (2^-11), half an ulp of bf16 (2^-8).
    for (dtype, tolerance) in [
        (FeatureDtype::F32, 0.0),
        (FeatureDtype::F16, 4.9e-4),
        (FeatureDtype::Bf16, 3.9e-3),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let written = write_set(dir.path(), dtype, 100);
        let set = FeatureShardSet::open(dir.path()).unwrap();
        assert!(set.index.shards.len() >= 3, "{:?}", set.index.shards);
        let mut read = vec![];
        for s in 0..set.index.shards.len() {
            let shard = set.open_shard(s).unwrap();
            for i in 0..shard.records().len() {
                read.push(shard.features(i, 0, &Device::Cpu).unwrap());
            }
        }
        assert_eq!(read.len(), written.len());
        for (a, b) in written.iter().zip(&read) {
            let a = a.flatten_all().unwrap().to_vec1::<f32>().unwrap();
            let b = b.flatten_all().unwrap().to_vec1::<f32>().unwrap();
            for (x, y) in a.iter().zip(&b) {
                let relative = (x - y).abs() / x.abs().max(1e-6);
                assert!(relative <= tolerance, "{dtype:?}: {x} read as {y}");
            }
        }
    }
}

#[test]
fn damage_and_mismatches_are_refused_with_the_file_named() {
    let dir = tempfile::tempdir().unwrap();
    write_set(dir.path(), FeatureDtype::F16, 200);
    let set = FeatureShardSet::open(dir.path()).unwrap();
    let err = set
        .check_encoders(&[("e:2".into(), 5)])
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("e:1 (width 5)") && err.contains("e:2 (width 5)"),
        "{err}"
    );
    // Same size, one byte changed: the checksum catches it on first open.
    let path = dir.path().join("shard-00001.safetensors");
    let mut bytes = std::fs::read(&path).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 1;
    std::fs::write(&path, &bytes).unwrap();
    let set = FeatureShardSet::open(dir.path()).unwrap();
    assert!(set.open_shard(0).is_ok());
    let err = set.open_shard(1).err().unwrap().to_string();
    assert!(
        err.contains("shard-00001.safetensors") && err.contains("checksum"),
        "{err}"
    );
    // Shorter than listed: refused at open.
    std::fs::write(&path, &bytes[..10]).unwrap();
    let err = FeatureShardSet::open(dir.path()).err().unwrap().to_string();
    assert!(
        err.contains("shard-00001.safetensors") && err.contains("bytes"),
        "{err}"
    );
    // An interrupted writer's set is not read.
    let mut index = ShardIndex::read(dir.path()).unwrap();
    index.complete = false;
    index.write(dir.path()).unwrap();
    let err = FeatureShardSet::open(dir.path()).err().unwrap().to_string();
    assert!(err.contains("incomplete"), "{err}");
    std::fs::write(dir.path().join(INDEX_FILE), "{\"format\": 1}").unwrap();
    let err = FeatureShardSet::open(dir.path()).err().unwrap().to_string();
    assert!(
        err.contains("index.json") && err.contains("malformed"),
        "{err}"
    );
}
