fn main() -> std::process::ExitCode {
    msglog::cli::main()
}
