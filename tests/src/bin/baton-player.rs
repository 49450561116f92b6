//! A game client in its own OS process: see [`baton_tests::player`].

use baton_tests::player::{run, PlayerArgs};
use clap::Parser;

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    run(PlayerArgs::parse()).await
}
