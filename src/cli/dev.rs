//! `exo dev ...`: hidden developer commands.

use crate::synth;
use anyhow::Context;
use clap::Subcommand;
use std::path::PathBuf;

#[derive(Subcommand, Debug)]
pub enum DevCommand {
    /// Write a seeded random-weight GGUF with a small real tokenizer.
    MakeModel {
        /// One of: tiny-llama, tiny-llama-tied, tiny-qwen2, tiny-qwen3moe, tinyllama-1b.
        #[arg(long)]
        preset: String,
        /// Output file.
        #[arg(long)]
        out: PathBuf,
        #[arg(long)]
        seed: Option<u64>,
        /// Override the number of layers.
        #[arg(long)]
        layers: Option<u32>,
    },
    /// Write a copy of a GGUF with its weights in another type, with llama.cpp's own quantizer
    /// (already quantized weights are quantized again, like `llama-quantize --allow-requantize`).
    Quantize {
        /// The model to read.
        #[arg(long = "in")]
        input: PathBuf,
        /// Output file.
        #[arg(long)]
        out: PathBuf,
        /// One of: f16, q4_0, q4_1, q4_k_m, q8_0.
        #[arg(long = "type")]
        to: String,
        #[arg(long, default_value_t = 2)]
        threads: i32,
    },
    /// Compare our placement with exo's and llama.cpp's on realistic clusters (markdown).
    PlacementScenarios {
        /// Write the report here instead of stdout.
        #[arg(long)]
        out: Option<PathBuf>,
        /// Where to put the header-only model files (sparse; default: a temporary dir).
        #[arg(long)]
        models: Option<PathBuf>,
    },
}

pub fn run(cmd: DevCommand) -> anyhow::Result<()> {
    match cmd {
        DevCommand::MakeModel { preset, out, seed, layers } => {
            let mut spec = synth::preset(&preset).ok_or_else(|| {
                super::UsageError(format!("unknown preset {preset:?}; presets: {}", synth::PRESETS.join(", ")))
            })?;
            if let Some(s) = seed {
                spec.seed = s;
            }
            if let Some(l) = layers {
                spec.n_layer = l;
            }
            let t = std::time::Instant::now();
            synth::make_model(&spec, &out).with_context(|| format!("writing {}", out.display()))?;
            let size = std::fs::metadata(&out)?.len();
            eprintln!("wrote {} ({:.1} MB) in {:.1?}", out.display(), size as f64 / 1e6, t.elapsed());
            Ok(())
        }
        DevCommand::Quantize { input, out, to, threads } => {
            let names: Vec<&str> = crate::engine::QuantType::ALL.iter().map(|(n, _)| *n).collect();
            let t = crate::engine::QuantType::parse(&to)
                .ok_or_else(|| super::UsageError(format!("unknown type {to:?}; types: {}", names.join(", "))))?;
            let started = std::time::Instant::now();
            crate::engine::quantize(&input, &out, t, threads.max(1))
                .with_context(|| format!("writing {}", out.display()))?;
            let size = std::fs::metadata(&out)?.len();
            eprintln!("wrote {} ({:.1} MB) in {:.1?}", out.display(), size as f64 / 1e6, started.elapsed());
            Ok(())
        }
        DevCommand::PlacementScenarios { out, models } => {
            let tmp;
            let dir = match models {
                Some(d) => {
                    std::fs::create_dir_all(&d)?;
                    d
                }
                None => {
                    tmp = tempfile::tempdir()?;
                    tmp.path().to_path_buf()
                }
            };
            let md = super::scenarios::report(&dir)?;
            match out {
                Some(p) => std::fs::write(&p, md).with_context(|| format!("writing {}", p.display()))?,
                None => print!("{md}"),
            }
            Ok(())
        }
    }
}
