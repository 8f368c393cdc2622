//! RDMA detection. The verbs transport (reliable-connected queue pairs, pre-registered
//! buffer pools, set up over a TCP side channel) is a later issue; this module already
//! decides, per host, whether it could be used, so that daemons log one clear line and use
//! TCP when there is no device.

use std::path::Path;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RdmaSupport {
    /// Devices found under `/sys/class/infiniband`.
    Devices(Vec<String>),
    /// No RDMA device: TCP is used.
    Absent(String),
}

/// Looks for RDMA devices in sysfs (`root` is `/` in production, a fixture in tests).
pub fn probe(root: &Path) -> RdmaSupport {
    let dir = root.join("sys/class/infiniband");
    match std::fs::read_dir(&dir) {
        Ok(entries) => {
            let mut names: Vec<String> = entries
                .filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect();
            names.sort();
            if names.is_empty() {
                RdmaSupport::Absent(format!("{} is empty", dir.display()))
            } else {
                RdmaSupport::Devices(names)
            }
        }
        Err(e) => RdmaSupport::Absent(format!("{}: {e}", dir.display())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn absent_and_present_devices() {
        let tmp = std::env::temp_dir().join(format!("atlant-rdma-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&tmp);
        assert!(matches!(probe(&tmp), RdmaSupport::Absent(_)));
        std::fs::create_dir_all(tmp.join("sys/class/infiniband/mlx5_0")).unwrap();
        assert_eq!(probe(&tmp), RdmaSupport::Devices(vec!["mlx5_0".into()]));
        let _ = std::fs::remove_dir_all(&tmp);
    }
}
