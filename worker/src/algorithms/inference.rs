//! What inference produces: a CSV with one row per input row, written as it is produced to a
//! [`CsvOut`] (kept in memory, streamed in chunks over a channel, or dropped), optionally the
//! same rows as JSON, and a summary (metrics over the whole input) for the job's result.

use gpuq_shared::{ErrorCode, JobError};
use serde_json::{Map, Value};
use tokio::sync::mpsc;

pub struct Inference {
    pub csv: CsvOut,
    pub rows: Vec<Value>,
    pub summary: Map<String, Value>,
}

impl Inference {
    /// Starts the CSV with its header row.
    pub fn new(columns: Vec<String>, mut csv: CsvOut) -> Self {
        csv.push_line(&columns);
        Self {
            csv,
            rows: Vec::new(),
            summary: Map::new(),
        }
    }

    /// One CSV row; fails once the other end of a streamed CSV has gone (the upload failed).
    pub fn push_csv(&mut self, cells: &[String]) -> Result<(), JobError> {
        self.csv.push_line(cells);
        self.csv.send_full_chunk()
    }
}

/// Where an inference's CSV goes.
pub struct CsvOut {
    /// Not yet sent (in memory: all of it).
    text: String,
    sink: Sink,
}

enum Sink {
    Memory,
    Discard,
    /// Chunks of at least `chunk` bytes to the uploader; `None` once finished.
    Channel {
        to: Option<mpsc::Sender<Vec<u8>>>,
        chunk: usize,
    },
}

impl CsvOut {
    /// Keeps the whole CSV, for [`text`](Self::text) (tests, small outputs).
    pub fn in_memory() -> Self {
        Self {
            text: String::new(),
            sink: Sink::Memory,
        }
    }

    /// Writes nothing (the job returns its rows inline only).
    pub fn discard() -> Self {
        Self {
            text: String::new(),
            sink: Sink::Discard,
        }
    }

    /// Sends the CSV in chunks of about `chunk` bytes, at most `depth` of them waiting; the
    /// producer blocks while they do. For a blocking thread: sending blocks it.
    pub fn channel(chunk: usize, depth: usize) -> (Self, mpsc::Receiver<Vec<u8>>) {
        let (to, from) = mpsc::channel(depth.max(1));
        let out = Self {
            text: String::with_capacity(chunk + chunk / 4),
            sink: Sink::Channel {
                to: Some(to),
                chunk,
            },
        };
        (out, from)
    }

    /// The CSV kept in memory (empty for the other sinks).
    pub fn text(&self) -> &str {
        &self.text
    }

    /// Sends what is left and closes the channel, so the uploader knows the CSV is complete.
    pub fn finish(&mut self) -> Result<(), JobError> {
        if let Sink::Channel { to, .. } = &mut self.sink
            && let Some(to) = to.take()
            && !self.text.is_empty()
        {
            send(&to, std::mem::take(&mut self.text))?;
        }
        Ok(())
    }

    fn push_line(&mut self, cells: &[String]) {
        if matches!(self.sink, Sink::Discard) {
            return;
        }
        for (i, c) in cells.iter().enumerate() {
            if i > 0 {
                self.text.push(',');
            }
            self.text.push_str(c);
        }
        self.text.push('\n');
    }

    fn send_full_chunk(&mut self) -> Result<(), JobError> {
        if let Sink::Channel {
            to: Some(to),
            chunk,
        } = &self.sink
            && self.text.len() >= *chunk
        {
            let fresh = String::with_capacity(chunk + chunk / 4);
            send(to, std::mem::replace(&mut self.text, fresh))?;
        }
        Ok(())
    }
}

fn send(to: &mpsc::Sender<Vec<u8>>, text: String) -> Result<(), JobError> {
    to.blocking_send(text.into_bytes()).map_err(|_| {
        JobError::new(
            ErrorCode::OutputWriteFailed,
            "the output's upload stopped before the output was complete",
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_streamed_csv_arrives_whole_in_chunks_and_the_channel_closes_on_finish() {
        let (csv, mut chunks) = CsvOut::channel(64, 1);
        let producer = std::thread::spawn(move || {
            let mut inf = Inference::new(vec!["a".into(), "b".into()], csv);
            for i in 0..100 {
                inf.push_csv(&[i.to_string(), (i * 2).to_string()]).unwrap();
            }
            inf.csv.finish().unwrap();
            inf
        });
        let mut got = Vec::new();
        let mut n = 0;
        while let Some(chunk) = chunks.blocking_recv() {
            got.extend(chunk);
            n += 1;
        }
        producer.join().unwrap();
        let mut want = Inference::new(vec!["a".into(), "b".into()], CsvOut::in_memory());
        for i in 0..100 {
            want.push_csv(&[i.to_string(), (i * 2).to_string()])
                .unwrap();
        }
        assert_eq!(String::from_utf8(got).unwrap(), want.csv.text());
        assert!(n > 5, "{n} chunks");
    }

    #[test]
    fn a_producer_whose_uploader_has_gone_fails_rather_than_blocking() {
        let (csv, chunks) = CsvOut::channel(8, 1);
        drop(chunks);
        let mut inf = Inference::new(vec!["a".into()], csv);
        let e = inf.push_csv(&["123456789".into()]).unwrap_err();
        assert_eq!(e.code, ErrorCode::OutputWriteFailed);
    }
}
