use clap::Parser;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    keel::cli::run(keel::cli::Cli::parse()).await
}
