//! meshguard control plane (Consul → xDS). Not implemented yet: see the bootstrap issue.

fn main() -> std::process::ExitCode {
    eprintln!("meshguard: the control plane is not implemented yet");
    std::process::ExitCode::from(2)
}
