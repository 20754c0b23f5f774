//! The image commands: `bolt pull`, `bolt images`, `bolt rmi`, `bolt tag`, `bolt push` and
//! `bolt image ls|rm|prune|import|export|pull|push|tag`, plus the agent's registry flags.
//!
//! Rendering is pure (`render_*`, [`human_size`], [`human_ago`]); [`run`] drives the client.
//! Progress of pulls, pushes and imports: indicatif bars when stdout is a terminal, else one
//! plain line per blob and phase change.

use std::collections::HashMap;
use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Subcommand, ValueEnum};
use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};

use crate::cli::{CliError, Format};
use crate::client::images::ImageCallError;
use crate::client::Client;
use crate::wire::images::{
    ExportRequest, ImageView, ImportRequest, ProgressView, PullRequest, PullView, PushRequest,
    TagRequest,
};
use crate::wire::time::{now_ms, parse_rfc3339_ms};

/// `bolt agent` registry settings.
#[derive(Debug, Clone, Default, Args)]
pub struct RegistryArgs {
    /// A registry (`host[:port]`) to reach over plain HTTP; repeatable. Loopback registries
    /// (localhost, 127.0.0.0/8, ::1) always are.
    #[arg(long = "insecure-registry", value_name = "HOST")]
    pub insecure_registries: Vec<String>,
    /// Registry credentials: a docker-style config.json (default `$DOCKER_CONFIG/config.json`,
    /// else `~/.docker/config.json`; a missing file means anonymous).
    #[arg(
        long = "registry-auth",
        env = "BOLT_REGISTRY_AUTH",
        value_name = "PATH"
    )]
    pub registry_auth: Option<PathBuf>,
    /// Refuse a layer that unpacks to more than this many bytes (a decompression bomb).
    #[arg(long, env = "BOLT_MAX_LAYER_BYTES", value_name = "BYTES")]
    pub max_layer_bytes: Option<u64>,
}

/// The top-level image commands (flattened into `bolt`'s commands).
#[derive(Debug, Subcommand)]
pub enum ImageCommands {
    /// Pull an image from a registry into this node's store.
    Pull(PullArgs),
    /// List the images in this node's store.
    Images(ListArgs),
    /// Remove image references (blobs stay until `bolt image prune`).
    Rmi(RmiArgs),
    /// Give a stored image another reference.
    Tag(TagArgs),
    /// Push a stored image to the registry its reference names.
    Push(PushArgs),
    /// Manage images.
    Image {
        #[command(subcommand)]
        command: ImageCommand,
    },
}

/// `bolt image <command>`.
#[derive(Debug, Subcommand)]
pub enum ImageCommand {
    /// List the images in this node's store.
    #[command(alias = "list")]
    Ls(ListArgs),
    /// Remove image references.
    Rm(RmiArgs),
    /// Remove every blob and unpacked layer no reference uses.
    Prune,
    /// Import an OCI image layout (directory or tar) or a docker-archive tar.
    Import(ImportArgs),
    /// Export images as an OCI image layout (tar or directory).
    Export(ExportArgs),
    /// Pull an image (as `bolt pull`).
    Pull(PullArgs),
    /// Push an image (as `bolt push`).
    Push(PushArgs),
    /// Tag an image (as `bolt tag`).
    Tag(TagArgs),
}

/// `bolt pull`.
#[derive(Debug, Args)]
pub struct PullArgs {
    /// The image, e.g. `127.0.0.1:5000/team/app:v1` (a missing tag means `latest`).
    pub reference: String,
    /// Platform to pick from a multi-platform image.
    #[arg(long, value_name = "OS/ARCH[/VARIANT]")]
    pub platform: Option<String>,
    /// No progress output.
    #[arg(short, long)]
    pub quiet: bool,
    /// `json` prints the result (blobs fetched and reused, layers) as one JSON object.
    #[arg(long, value_enum, default_value_t)]
    pub format: Format,
}

/// `bolt images`.
#[derive(Debug, Args)]
pub struct ListArgs {
    /// `json` prints one image object per line.
    #[arg(long, value_enum, default_value_t)]
    pub format: Format,
}

/// `bolt rmi`.
#[derive(Debug, Args)]
pub struct RmiArgs {
    /// References to remove.
    #[arg(required = true)]
    pub references: Vec<String>,
}

/// `bolt tag`.
#[derive(Debug, Args)]
pub struct TagArgs {
    /// A stored reference.
    pub source: String,
    /// The new reference.
    pub target: String,
}

/// `bolt push`.
#[derive(Debug, Args)]
pub struct PushArgs {
    /// A stored reference; pushed to the registry and repository it names.
    pub reference: String,
    /// No progress output.
    #[arg(short, long)]
    pub quiet: bool,
}

/// `bolt image import`.
#[derive(Debug, Args)]
pub struct ImportArgs {
    /// The layout directory or archive (read by the agent).
    pub path: PathBuf,
    /// Name the imported image (needed when the archive names none).
    #[arg(long)]
    pub reference: Option<String>,
    /// No progress output.
    #[arg(short, long)]
    pub quiet: bool,
}

/// Export formats.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, ValueEnum)]
pub enum ExportFormatArg {
    /// An OCI image layout in a tar file.
    #[default]
    OciTar,
    /// An OCI image layout directory.
    OciDir,
}

/// `bolt image export`.
#[derive(Debug, Args)]
pub struct ExportArgs {
    /// Stored references to export.
    #[arg(required = true)]
    pub references: Vec<String>,
    /// Where to write (written by the agent; must not exist).
    #[arg(short, long)]
    pub output: PathBuf,
    #[arg(long, value_enum, default_value_t)]
    pub format: ExportFormatArg,
}

impl From<ImageCallError> for CliError {
    fn from(e: ImageCallError) -> CliError {
        match e {
            ImageCallError::Client(c) => CliError::Client(c),
            ImageCallError::Failed(m) => CliError::Failed(m),
        }
    }
}

/// Run an image command against the agent.
pub async fn run(client: &Client, cmd: ImageCommands, out: &mut dyn Write) -> Result<(), CliError> {
    match cmd {
        ImageCommands::Pull(a) => pull(client, a, out).await,
        ImageCommands::Images(a) => list(client, a, out).await,
        ImageCommands::Rmi(a) => rmi(client, a, out).await,
        ImageCommands::Tag(a) => tag(client, a).await,
        ImageCommands::Push(a) => push(client, a, out).await,
        ImageCommands::Image { command } => match command {
            ImageCommand::Ls(a) => list(client, a, out).await,
            ImageCommand::Rm(a) => rmi(client, a, out).await,
            ImageCommand::Prune => prune(client, out).await,
            ImageCommand::Import(a) => import(client, a, out).await,
            ImageCommand::Export(a) => export(client, a, out).await,
            ImageCommand::Pull(a) => pull(client, a, out).await,
            ImageCommand::Push(a) => push(client, a, out).await,
            ImageCommand::Tag(a) => tag(client, a).await,
        },
    }
}

async fn pull(client: &Client, a: PullArgs, out: &mut dyn Write) -> Result<(), CliError> {
    let req = PullRequest {
        reference: a.reference,
        platform: a.platform,
    };
    let mut shown = Progress::new(a.quiet || a.format == Format::Json);
    let res = client
        .pull(&req, &mut |p| shown.show(&p, &mut std::io::stdout()))
        .await;
    shown.finish();
    let v = res?;
    match a.format {
        Format::Json => writeln!(out, "{}", serde_json::to_string(&v)?)?,
        Format::Table => writeln!(out, "{}", render_pulled(&v))?,
    }
    Ok(())
}

async fn push(client: &Client, a: PushArgs, out: &mut dyn Write) -> Result<(), CliError> {
    let req = PushRequest {
        reference: a.reference,
    };
    let mut shown = Progress::new(a.quiet);
    let res = client
        .push(&req, &mut |p| shown.show(&p, &mut std::io::stdout()))
        .await;
    shown.finish();
    let v = res?;
    writeln!(
        out,
        "{}: pushed {} ({} uploaded, {} already there)",
        v.reference,
        v.digest,
        v.uploaded.len(),
        v.skipped.len()
    )?;
    Ok(())
}

async fn import(client: &Client, a: ImportArgs, out: &mut dyn Write) -> Result<(), CliError> {
    let path = std::path::absolute(&a.path)?;
    let req = ImportRequest {
        path,
        reference: a.reference,
    };
    let mut shown = Progress::new(a.quiet);
    let res = client
        .import(&req, &mut |p| shown.show(&p, &mut std::io::stdout()))
        .await;
    shown.finish();
    for v in res? {
        writeln!(out, "imported {} ({})", v.image.reference, v.image.digest)?;
    }
    Ok(())
}

async fn export(client: &Client, a: ExportArgs, out: &mut dyn Write) -> Result<(), CliError> {
    let req = ExportRequest {
        references: a.references,
        path: std::path::absolute(&a.output)?,
        format: Some(
            match a.format {
                ExportFormatArg::OciTar => "oci-tar",
                ExportFormatArg::OciDir => "oci-dir",
            }
            .to_string(),
        ),
    };
    let v = client.export(&req).await?;
    writeln!(
        out,
        "exported {} image(s) to {} ({})",
        v.references.len(),
        v.path.display(),
        v.format
    )?;
    Ok(())
}

async fn list(client: &Client, a: ListArgs, out: &mut dyn Write) -> Result<(), CliError> {
    let images = client.images().await?;
    match a.format {
        Format::Json => {
            for i in &images {
                writeln!(out, "{}", serde_json::to_string(i)?)?;
            }
        }
        Format::Table => out.write_all(render_images(&images, now_ms()).as_bytes())?,
    }
    Ok(())
}

async fn rmi(client: &Client, a: RmiArgs, out: &mut dyn Write) -> Result<(), CliError> {
    for r in &a.references {
        let v = client.remove_image(r).await?;
        writeln!(out, "untagged {} ({})", v.reference, v.digest)?;
    }
    Ok(())
}

async fn tag(client: &Client, a: TagArgs) -> Result<(), CliError> {
    client
        .tag(&TagRequest {
            source: a.source,
            target: a.target,
        })
        .await?;
    Ok(())
}

async fn prune(client: &Client, out: &mut dyn Write) -> Result<(), CliError> {
    let v = client.prune().await?;
    writeln!(
        out,
        "removed {} blob(s) ({}) and {} unpacked layer(s)",
        v.blobs.len(),
        human_size(v.blob_bytes),
        v.layers.len()
    )?;
    Ok(())
}

/// How progress is shown.
enum Progress {
    Quiet,
    /// One line per blob and phase change.
    Lines(HashMap<String, String>),
    /// A bar per blob.
    Bars {
        multi: MultiProgress,
        bars: HashMap<String, ProgressBar>,
    },
}

impl Progress {
    fn new(quiet: bool) -> Progress {
        if quiet {
            Progress::Quiet
        } else if std::io::stdout().is_terminal() {
            Progress::Bars {
                multi: MultiProgress::with_draw_target(ProgressDrawTarget::stdout()),
                bars: HashMap::new(),
            }
        } else {
            Progress::Lines(HashMap::new())
        }
    }

    fn show(&mut self, p: &ProgressView, out: &mut dyn Write) {
        match self {
            Progress::Quiet => {}
            Progress::Lines(seen) => {
                if seen.get(&p.digest) != Some(&p.phase) {
                    seen.insert(p.digest.clone(), p.phase.clone());
                    // Progress is best effort: a closed stdout shows up at the result line.
                    let _ = writeln!(out, "{}", progress_line(p));
                }
            }
            Progress::Bars { multi, bars } => {
                let bar = bars.entry(p.digest.clone()).or_insert_with(|| {
                    let bar = multi.add(ProgressBar::new(p.total.unwrap_or(0)));
                    let style = ProgressStyle::with_template(
                        "{prefix} {msg:<10} [{bar:30}] {bytes}/{total_bytes}",
                    )
                    .unwrap_or_else(|_| ProgressStyle::default_bar())
                    .progress_chars("=> ");
                    bar.set_style(style);
                    bar.set_prefix(short_digest(&p.digest));
                    bar
                });
                if let Some(t) = p.total {
                    bar.set_length(t);
                }
                bar.set_message(phase_label(&p.phase));
                bar.set_position(p.done);
            }
        }
    }

    fn finish(&mut self) {
        if let Progress::Bars { bars, .. } = self {
            for bar in bars.values() {
                bar.abandon();
            }
        }
    }
}

fn phase_label(phase: &str) -> String {
    match phase {
        "reused" => "present".to_string(),
        other => other.to_string(),
    }
}

/// `sha256:0123456789ab` (the first 12 hex digits).
pub fn short_digest(d: &str) -> String {
    match d.split_once(':') {
        Some((alg, hex)) => format!("{alg}:{}", hex.get(..12).unwrap_or(hex)),
        None => d.get(..12).unwrap_or(d).to_string(),
    }
}

/// A plain progress line: `sha256:0123456789ab: fetching 1.2MB`.
pub fn progress_line(p: &ProgressView) -> String {
    let size = p.total.map(human_size);
    match (p.phase.as_str(), size) {
        ("reused", _) => format!("{}: already present", short_digest(&p.digest)),
        (phase, Some(size)) => format!("{}: {phase} {size}", short_digest(&p.digest)),
        (phase, None) => format!("{}: {phase}", short_digest(&p.digest)),
    }
}

/// The line `bolt pull` ends with.
pub fn render_pulled(v: &PullView) -> String {
    format!(
        "{}: pulled {} ({} blob(s) fetched, {} already present)",
        v.image.reference,
        v.image.digest,
        v.fetched.len(),
        v.reused.len()
    )
}

/// The repository as people write it (`busybox` for Docker Hub's library images).
pub fn display_repository(repo: &str) -> &str {
    repo.strip_prefix("docker.io/library/")
        .or_else(|| repo.strip_prefix("docker.io/"))
        .unwrap_or(repo)
}

/// `bolt images`: REPOSITORY TAG DIGEST SIZE CREATED, as docker shows them.
pub fn render_images(images: &[ImageView], now_ms: u64) -> String {
    let mut rows = vec![["REPOSITORY", "TAG", "DIGEST", "SIZE", "CREATED"].map(String::from)];
    for i in images {
        let created_ms = i
            .created
            .as_deref()
            .and_then(parse_rfc3339_ms)
            .unwrap_or(i.stored_at_ms);
        rows.push([
            display_repository(&i.repository).to_string(),
            i.tag.clone().unwrap_or_else(|| "<none>".to_string()),
            short_digest(&i.digest),
            human_size(i.size),
            human_ago(now_ms.saturating_sub(created_ms)),
        ]);
    }
    crate::cli::table::align(&rows, 3)
}

/// Sizes as docker prints them: decimal units, three significant digits (`4.26MB`).
pub fn human_size(bytes: u64) -> String {
    const UNITS: [&str; 6] = ["kB", "MB", "GB", "TB", "PB", "EB"];
    if bytes < 1000 {
        return format!("{bytes}B");
    }
    let mut v = bytes as f64 / 1000.0;
    let mut unit = 0;
    while v >= 999.5 && unit + 1 < UNITS.len() {
        v /= 1000.0;
        unit += 1;
    }
    let digits = if v < 9.995 {
        2
    } else if v < 99.95 {
        1
    } else {
        0
    };
    let mut n = format!("{v:.digits$}");
    if n.contains('.') {
        n = n.trim_end_matches('0').trim_end_matches('.').to_string();
    }
    format!("{n}{}", UNITS[unit])
}

/// How long ago, as docker says it (`About a minute ago`, `3 days ago`).
pub fn human_ago(ms: u64) -> String {
    let d = Duration::from_millis(ms);
    let secs = d.as_secs();
    let hours = (secs as f64 / 3600.0).round() as u64;
    let text = if secs < 1 {
        "Less than a second".to_string()
    } else if secs == 1 {
        "1 second".to_string()
    } else if secs < 60 {
        format!("{secs} seconds")
    } else if secs / 60 == 1 {
        "About a minute".to_string()
    } else if secs < 3600 {
        format!("{} minutes", secs / 60)
    } else if hours == 1 {
        "About an hour".to_string()
    } else if hours < 48 {
        format!("{hours} hours")
    } else if hours < 24 * 7 * 2 {
        format!("{} days", hours / 24)
    } else if hours < 24 * 30 * 2 {
        format!("{} weeks", hours / 24 / 7)
    } else if hours < 24 * 365 * 2 {
        format!("{} months", hours / 24 / 30)
    } else {
        format!("{} years", hours / 24 / 365)
    };
    format!("{text} ago")
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn image(repo: &str, tag: Option<&str>, size: u64, created: Option<&str>) -> ImageView {
        ImageView {
            reference: format!("{repo}:{}", tag.unwrap_or("x")),
            repository: repo.to_string(),
            tag: tag.map(str::to_string),
            digest: format!("sha256:{}", "ab".repeat(32)),
            config_digest: format!("sha256:{}", "cd".repeat(32)),
            index_digest: None,
            size,
            os: "linux".into(),
            architecture: "amd64".into(),
            created: created.map(str::to_string),
            stored_at_ms: 1_000_000,
            layers: vec![],
        }
    }

    #[test]
    fn sizes_are_decimal_with_three_significant_digits() {
        assert_eq!(human_size(0), "0B");
        assert_eq!(human_size(999), "999B");
        assert_eq!(human_size(1000), "1kB");
        assert_eq!(human_size(1234), "1.23kB");
        assert_eq!(human_size(4_262_000), "4.26MB");
        assert_eq!(human_size(12_345_678), "12.3MB");
        assert_eq!(human_size(123_456_789), "123MB");
        assert_eq!(human_size(999_999), "1MB");
        assert_eq!(human_size(u64::MAX), "18.4EB");
    }

    #[test]
    fn ages_read_like_docker() {
        assert_eq!(human_ago(0), "Less than a second ago");
        assert_eq!(human_ago(1_000), "1 second ago");
        assert_eq!(human_ago(45_000), "45 seconds ago");
        assert_eq!(human_ago(90_000), "About a minute ago");
        assert_eq!(human_ago(30 * 60_000), "30 minutes ago");
        assert_eq!(human_ago(3_600_000), "About an hour ago");
        assert_eq!(human_ago(5 * 3_600_000), "5 hours ago");
        assert_eq!(human_ago(3 * 86_400_000), "3 days ago");
        assert_eq!(human_ago(21 * 86_400_000), "3 weeks ago");
        assert_eq!(human_ago(90 * 86_400_000), "3 months ago");
        assert_eq!(human_ago(3 * 365 * 86_400_000), "3 years ago");
    }

    #[test]
    fn the_images_table_has_docker_columns() {
        let now = parse_rfc3339_ms("2024-01-01T01:00:00Z").unwrap();
        let t = render_images(
            &[
                image(
                    "docker.io/library/busybox",
                    Some("latest"),
                    2_150_000,
                    Some("2024-01-01T00:59:00Z"),
                ),
                image("127.0.0.1:5015/bolt-test/debian", None, 80_000_000, None),
            ],
            now,
        );
        let lines: Vec<&str> = t.lines().collect();
        assert_eq!(lines.len(), 3, "{t}");
        assert!(lines[0].starts_with("REPOSITORY"), "{t}");
        for (col, word) in ["TAG", "DIGEST", "SIZE", "CREATED"].iter().enumerate() {
            assert!(lines[0].contains(word), "column {col} {word}: {t}");
        }
        assert!(
            lines[1].starts_with("busybox ")
                && lines[1].contains(" latest ")
                && lines[1].contains(" sha256:abababababab ")
                && lines[1].contains(" 2.15MB ")
                && lines[1].ends_with("About a minute ago"),
            "{t}"
        );
        assert!(
            lines[2].starts_with("127.0.0.1:5015/bolt-test/debian ")
                && lines[2].contains(" <none> ")
                && lines[2].contains(" 80MB "),
            "{t}"
        );
        // Columns line up: every DIGEST starts where its header does.
        let at = lines[0].find("DIGEST").unwrap();
        assert_eq!(&lines[1][at..at + 7], "sha256:");
        assert_eq!(&lines[2][at..at + 7], "sha256:");
    }

    #[test]
    fn plain_progress_lines_name_the_blob_and_phase() {
        let p = ProgressView {
            digest: format!("sha256:{}", "0123456789".repeat(6) + "abcd"),
            phase: "fetching".into(),
            done: 0,
            total: Some(1_500_000),
        };
        assert_eq!(progress_line(&p), "sha256:012345678901: fetching 1.5MB");
        let reused = ProgressView {
            phase: "reused".into(),
            ..p
        };
        assert_eq!(
            progress_line(&reused),
            "sha256:012345678901: already present"
        );
    }
}
