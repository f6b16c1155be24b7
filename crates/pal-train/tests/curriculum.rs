//! Curriculum files refuse keys they do not know, naming the key and its table.

use pal_train::curriculum::Curriculum;

#[test]
fn a_misspelt_key_in_any_nested_table_is_refused_with_key_and_table() {
    let text = r#"
model = "model.toml"
output = "runs/x"

[[stages]]
name = "one"
manifests = [{ path = "a.jsonl", weight = 1.0 }]
steps = 10
lr = 1e-3
batch_size = 2

[[stages]]
name = "two"
manifests = [{ path = "a.jsonl" }]
steps = 10
lr = 1e-3
batch_size = 2
trainable = { lora = { rank = 4, targets = ["q_proj"] } }
"#;
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("curriculum.toml");
    std::fs::write(&path, text).unwrap();
    Curriculum::load(&path).expect("the unmodified curriculum loads");
    let cases = [
        ("output =", "outptu =", "outptu", ""),
        (
            "batch_size = 2\n\n",
            "batch_sise = 2\n\n",
            "batch_sise",
            "stages[0]",
        ),
        (
            "weight = 1.0",
            "wieght = 1.0",
            "wieght",
            "stages[0].manifests",
        ),
        ("rank = 4", "rnak = 4", "rnak", "stages[1].trainable.lora"),
    ];
    for (good, bad, key, table) in cases {
        assert!(text.contains(good), "{good}");
        std::fs::write(&path, text.replacen(good, bad, 1)).unwrap();
        let err = Curriculum::load(&path).unwrap_err().to_string();
        assert!(err.contains("curriculum.toml"), "{err}");
        // serde says "unknown field `k`", toml for enum variants "unexpected keys in table: k".
        assert!(
            err.contains(&format!("unknown field `{key}`"))
                || err.contains(&format!("unexpected keys in table: {key}")),
            "{err}"
        );
        if !table.is_empty() {
            assert!(err.contains(&format!("in table {table}")), "{err}");
        }
    }
}
