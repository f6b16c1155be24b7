//! The `pal` binary: [`pal::run`] on this process's arguments.

fn main() -> anyhow::Result<()> {
    pal::run(std::env::args_os())
}
