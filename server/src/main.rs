fn main() -> std::process::ExitCode {
    portcullis::cli::main()
}
