//! `skewless validate`: check job files, every problem with file, line and key.

use std::path::PathBuf;
use std::process::ExitCode;

use skewless::job::Job;

/// Runs the command over `jobs`.
pub fn main(jobs: Vec<PathBuf>) -> anyhow::Result<ExitCode> {
    let mut ok = true;
    for path in jobs {
        match Job::load(&path) {
            Ok(job) => {
                println!(
                    "{}: ok (job `{}`: {} event types, {} states, {} features)",
                    path.display(),
                    job.name,
                    job.registry.types().len(),
                    job.features.states.len(),
                    job.features.features.len()
                );
                describe(&job);
            }
            Err(error) => {
                ok = false;
                eprintln!("{}", skewless::error_chain(&error));
            }
        }
    }
    Ok(if ok { ExitCode::SUCCESS } else { ExitCode::FAILURE })
}

/// Prints where a job reads and writes, as `skewless run` would without flags.
fn describe(job: &Job) {
    let kafka = job
        .kafka
        .as_ref()
        .filter(|k| !k.topics.is_empty() && job.inputs.is_empty());
    match kafka {
        Some(kafka) => println!(
            "  source: Kafka {} at {} (group {})",
            kafka.topics.join(", "),
            kafka.settings.brokers,
            kafka.group
        ),
        None if job.inputs.is_empty() => println!("  source: none (give --input or --topic)"),
        None => println!("  source: files {}", job.inputs.join(", ")),
    }
    let sinks = &job.sinks;
    let off = |p: &Option<PathBuf>| p.as_ref().map_or("off".to_owned(), |p| p.display().to_string());
    if job.archive_only() {
        println!("  archive only: no views, no dead letters");
    } else {
        println!("  views_sqlite: {}", off(&sinks.views_sqlite));
        println!("  views_jsonl: {}", off(&sinks.views_jsonl));
        if let Some(redis) = &sinks.redis {
            println!(
                "  views_redis: {} ({}<user_id>, ttl {})",
                redis.url, redis.key_prefix, redis.ttl
            );
        }
        match kafka {
            Some(kafka) => {
                let topics =
                    skewless::sinks::dlq_kafka::DeadLetterTopics::new(&kafka.topics, sinks.dlq_topic.clone());
                println!("  dlq: topics {}", topics.all().join(", "));
            }
            None => println!("  dlq: {}", off(&sinks.dlq)),
        }
    }
    if let Some(archive) = &sinks.archive {
        println!("  archive: {}", archive.dir.display());
    }
    println!("  summary: {}", off(&sinks.summary));
}
