fn main() -> anyhow::Result<()> {
    msglog::cli::main()
}
