//! The names `deskd-bench populate` gives the folders and files of a benchmark volume, in
//! one place: the benchmark makes them on disk, and deskd-db's `find_scale` example indexes
//! the same names in memory, so the two measure the same volume and cannot drift apart.
//! (Here because both can use deskd-db; deskd-cli, the benchmark's crate, depends on it.)

/// The words the file names are made of: varied, realistic-looking names, so substring
/// patterns have something to find (and something to miss).
const WORDS: [&str; 8] = [
    "report", "layout", "invoice", "photo", "draft", "scan", "proof", "final",
];

/// The name of file `file` in folder `dir`: `photo-0003-layout-000011.dat`.
pub fn file_name(dir: u32, file: u32) -> String {
    format!(
        "{}-{dir:04}-{}-{file:06}.dat",
        WORDS[(file % 8) as usize],
        WORDS[((file / 8) % 8) as usize]
    )
}

/// The name of folder `dir`: `dir0003`.
pub fn dir_name(dir: u32) -> String {
    format!("dir{dir:04}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_the_benchmarks_own() {
        // The names PERFORMANCE.md's runs were made with: changing them changes every figure.
        assert_eq!(file_name(0, 0), "report-0000-report-000000.dat");
        assert_eq!(file_name(3, 11), "photo-0003-layout-000011.dat");
        assert_eq!(file_name(12, 9999), "final-0012-layout-009999.dat");
        assert_eq!(dir_name(7), "dir0007");
    }
}
