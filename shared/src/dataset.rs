//! Input data: numeric CSV (with a header row) and `.npy` (float32/float64, 2-D), read as a
//! stream straight into one row-major `f32` matrix, so a large input is never held twice.
//! Every problem is an `invalid_input` error that says where (line and column). The matrix
//! grows only as far as the job's [`Reservation`] of its worker's memory budget allows, and an
//! input over the deployment's rows, features or cells fails `input_too_large` while streaming.

use crate::config::Limits;
use crate::error::{ErrorCode, JobError};
use crate::memory::Reservation;
use tokio::io::{AsyncBufRead, AsyncBufReadExt, AsyncRead, AsyncReadExt};

/// A dense row-major matrix of features, with the names of its columns.
#[derive(Debug, Clone, PartialEq)]
pub struct Matrix {
    pub rows: usize,
    pub cols: usize,
    pub data: Vec<f32>,
    pub columns: Vec<String>,
}

impl Matrix {
    pub fn row(&self, i: usize) -> &[f32] {
        &self.data[i * self.cols..(i + 1) * self.cols]
    }
}

/// Features, the label column when one was asked for and present, and each row's group when a
/// group column was asked for (a fleet's).
#[derive(Debug, Clone)]
pub struct Table {
    pub features: Matrix,
    pub labels: Option<Vec<f32>>,
    pub groups: Option<Groups>,
}

/// Each row's group: an index into `names`, the distinct values in the order first seen.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Groups {
    pub names: Vec<String>,
    pub of_row: Vec<u32>,
    index: std::collections::HashMap<String, u32>,
}

impl Groups {
    /// Records the next row's group.
    pub fn push(&mut self, value: &str) {
        let slot = match self.index.get(value) {
            Some(&slot) => slot,
            None => {
                let slot = self.names.len() as u32;
                self.index.insert(value.to_string(), slot);
                self.names.push(value.to_string());
                slot
            }
        };
        self.of_row.push(slot);
    }

    /// The rows of each group, in input order, group by group in `names`' order.
    pub fn rows_by_group(&self) -> Vec<Vec<usize>> {
        let mut rows = vec![Vec::new(); self.names.len()];
        for (r, &g) in self.of_row.iter().enumerate() {
            rows[g as usize].push(r);
        }
        rows
    }
}

/// The columns a reader splits off the features: the label (required or not) and a fleet's group.
#[derive(Debug, Clone, Copy)]
pub struct Columns<'a> {
    pub label: &'a str,
    pub require_label: bool,
    pub group: Option<&'a str>,
}

impl<'a> Columns<'a> {
    pub fn label(label: &'a str, require_label: bool) -> Self {
        Self {
            label,
            require_label,
            group: None,
        }
    }
}

/// Where the group column is among `names`, if one is asked for; missing, an error naming the
/// columns that exist.
fn group_index(group: Option<&str>, names: &[String]) -> Result<Option<usize>, JobError> {
    let Some(group) = group else {
        return Ok(None);
    };
    match names.iter().position(|n| n == group) {
        Some(i) => Ok(Some(i)),
        None => Err(invalid(format!(
            "missing group column `{group}` (columns: {})",
            names.join(", ")
        ))),
    }
}

fn invalid(msg: impl Into<String>) -> JobError {
    JobError::invalid_input(msg)
}

fn too_large(msg: String) -> JobError {
    JobError::new(ErrorCode::InputTooLarge, msg)
}

/// Reads one line into `line` (cleared first), at most `cap` bytes; returns its length.
async fn read_line_capped<R: AsyncBufRead + Unpin>(
    reader: &mut R,
    line: &mut Vec<u8>,
    cap: usize,
    line_no: usize,
) -> Result<usize, JobError> {
    line.clear();
    let n = reader
        .take(cap as u64 + 1)
        .read_until(b'\n', line)
        .await
        .map_err(|e| JobError::new(ErrorCode::InputReadFailed, e.to_string()))?;
    if n > cap {
        return Err(too_large(format!(
            "line {line_no} is longer than {cap} bytes"
        )));
    }
    Ok(n)
}

/// Makes room in `v` for `extra` more values, never past `ceiling` values in all, after growing
/// the job's reservation to cover it; `beside` is what the table's other vector holds (values).
/// Grows by half at a time while the budget has room, else just by what is needed.
async fn make_room(
    v: &mut Vec<f32>,
    extra: usize,
    ceiling: usize,
    beside: usize,
    memory: &mut Reservation,
) -> Result<(), JobError> {
    let need = v.len() + extra;
    if need <= v.capacity() {
        return Ok(());
    }
    let bytes = |values: usize| (values.saturating_add(beside) as u64).saturating_mul(4);
    let roomy = (v.capacity() + v.capacity() / 2)
        .max(4096)
        .min(ceiling)
        .max(need);
    let cap = if memory.try_grow_to(bytes(roomy)) {
        roomy
    } else {
        memory.grow_to(bytes(need)).await?;
        need
    };
    v.reserve_exact(cap - v.len());
    Ok(())
}

/// Gives back the room the vectors did not use, to the allocator and to the budget.
fn trim(data: &mut Vec<f32>, labels: &mut Option<Vec<f32>>, memory: &mut Reservation) {
    data.shrink_to_fit();
    let mut values = data.capacity();
    if let Some(l) = labels {
        l.shrink_to_fit();
        values += l.capacity();
    }
    memory.shrink_to(values as u64 * 4);
}

fn check_finite(v: f32, line: usize, column: &str) -> Result<f32, JobError> {
    if v.is_finite() {
        Ok(v)
    } else {
        Err(invalid(format!(
            "line {line}, column `{column}`: value {v} is not a finite number"
        )))
    }
}

/// Reads a CSV stream. `label_column`, when given, is split off into `labels`; if `require_label`
/// and it is missing, that is an error naming the columns that do exist.
/// Inputs over `limits` (rows, features, cells) or over what `memory` may grow to are refused
/// as `input_too_large` while reading, before the row that would cross the line is stored.
pub async fn read_csv<R: AsyncBufRead + Unpin>(
    reader: R,
    label_column: &str,
    require_label: bool,
    limits: &Limits,
    memory: &mut Reservation,
) -> Result<Table, JobError> {
    let columns = Columns::label(label_column, require_label);
    read_csv_columns(reader, columns, limits, memory).await
}

/// [`read_csv`], also splitting off `columns.group`: each row's value of it, as text, is its
/// group (a missing group column is an error naming the columns that exist).
pub async fn read_csv_columns<R: AsyncBufRead + Unpin>(
    mut reader: R,
    split: Columns<'_>,
    limits: &Limits,
    memory: &mut Reservation,
) -> Result<Table, JobError> {
    let (label_column, require_label) = (split.label, split.require_label);
    let mut line = Vec::new();
    // Room for every allowed column at 64 bytes a cell (names or numbers).
    let cap = (limits.max_features + 1).saturating_mul(64).max(4096);
    if read_line_capped(&mut reader, &mut line, cap, 1).await? == 0 {
        return Err(invalid("the CSV input is empty (expected a header row)"));
    }
    let header = std::str::from_utf8(&line)
        .map_err(|_| invalid("line 1: the header row is not UTF-8"))?
        .trim_end_matches(['\n', '\r'])
        .trim_start_matches('\u{feff}');
    let names: Vec<String> = header
        .split(',')
        .map(|c| c.trim().trim_matches('"').to_string())
        .collect();
    if names.iter().any(|n| n.is_empty()) {
        return Err(invalid("line 1: the header row has an empty column name"));
    }
    // A repeated name would make `label_column` (and the model's feature names) ambiguous.
    let mut seen = std::collections::HashSet::new();
    if let Some(dup) = names.iter().find(|n| !seen.insert(n.as_str())) {
        return Err(invalid(format!(
            "line 1: column `{dup}` appears more than once"
        )));
    }
    if names.len() > limits.max_features + 1 {
        return Err(too_large(format!(
            "{} columns; this deployment allows {} features",
            names.len(),
            limits.max_features
        )));
    }
    let label_index = names.iter().position(|n| n == label_column);
    if require_label && label_index.is_none() {
        return Err(invalid(format!(
            "missing label column `{label_column}` (columns: {})",
            names.join(", ")
        )));
    }
    let group_index = group_index(split.group, &names)?;
    let columns: Vec<String> = names
        .iter()
        .enumerate()
        .filter(|(i, _)| Some(*i) != label_index && Some(*i) != group_index)
        .map(|(_, n)| n.clone())
        .collect();
    let cols = columns.len();
    let mut groups = group_index.map(|_| Groups::default());
    // The header check allows one column more for the label; without a label it is a feature.
    if cols > limits.max_features {
        return Err(too_large(format!(
            "{cols} feature columns; this deployment allows {}",
            limits.max_features
        )));
    }
    let mut data = Vec::new();
    let mut labels = label_index.map(|_| Vec::new());
    let mut rows = 0usize;
    let mut line_no = 1usize;
    loop {
        if read_line_capped(&mut reader, &mut line, cap, line_no + 1).await? == 0 {
            break;
        }
        line_no += 1;
        let text = std::str::from_utf8(&line)
            .map_err(|_| invalid(format!("line {line_no}: not UTF-8")))?
            .trim_end_matches(['\n', '\r']);
        if text.trim().is_empty() {
            continue;
        }
        if (rows + 1).saturating_mul(cols) > limits.max_cells {
            return Err(too_large(format!(
                "more than {rows} rows × {cols} features; this deployment allows {} cells",
                limits.max_cells
            )));
        }
        let beside = labels.as_ref().map_or(0, Vec::capacity);
        make_room(&mut data, cols, limits.max_cells, beside, memory).await?;
        if let Some(l) = &mut labels {
            make_room(l, 1, limits.max_rows, data.capacity(), memory).await?;
        }
        let mut width = 0usize;
        for (i, cell) in text.split(',').enumerate() {
            width += 1;
            let name = names.get(i).ok_or_else(|| {
                invalid(format!(
                    "line {line_no}: more cells than the {} header columns",
                    names.len()
                ))
            })?;
            let cell = cell.trim().trim_matches('"');
            if let (Some(g), true) = (&mut groups, Some(i) == group_index) {
                if cell.is_empty() || cell.len() > 256 {
                    return Err(invalid(format!(
                        "line {line_no}, column `{name}`: a group value must be 1 to 256 characters"
                    )));
                }
                g.push(cell);
                continue;
            }
            let v: f32 = cell.parse().map_err(|_| {
                invalid(format!(
                    "line {line_no}, column `{name}` ({}): `{cell}` is not a number",
                    i + 1
                ))
            })?;
            let v = check_finite(v, line_no, name)?;
            match (&mut labels, Some(i) == label_index) {
                (Some(l), true) => l.push(v),
                _ => data.push(v),
            }
        }
        if width != names.len() {
            return Err(invalid(format!(
                "line {line_no}: {width} cells where the header has {} columns",
                names.len()
            )));
        }
        rows += 1;
        if rows > limits.max_rows {
            return Err(too_large(format!(
                "more than {} rows; this deployment's limit",
                limits.max_rows
            )));
        }
    }
    if rows == 0 {
        return Err(invalid("the CSV input has a header but no data rows"));
    }
    if cols == 0 {
        return Err(invalid("the input has no feature columns"));
    }
    trim(&mut data, &mut labels, memory);
    Ok(Table {
        features: Matrix {
            rows,
            cols,
            data,
            columns,
        },
        labels,
        groups,
    })
}

/// Reads a `.npy` stream (little-endian float32 or float64, C order, 2-D). Its columns are named
/// by index (`"0"`, `"1"`, …), so `label_column` can name one of them.
/// The claimed shape is checked against `limits` and reserved from `memory` in full before
/// anything is allocated.
pub async fn read_npy<R: AsyncRead + Unpin>(
    reader: R,
    label_column: &str,
    require_label: bool,
    limits: &Limits,
    memory: &mut Reservation,
) -> Result<Table, JobError> {
    let columns = Columns::label(label_column, require_label);
    read_npy_columns(reader, columns, limits, memory).await
}

/// [`read_npy`], also splitting off `columns.group` (a column index): each row's value of it,
/// written as a number (`3`, not `3.0`), is its group.
pub async fn read_npy_columns<R: AsyncRead + Unpin>(
    mut reader: R,
    split: Columns<'_>,
    limits: &Limits,
    memory: &mut Reservation,
) -> Result<Table, JobError> {
    let (label_column, require_label) = (split.label, split.require_label);
    let read_err = |e: std::io::Error| match e.kind() {
        std::io::ErrorKind::UnexpectedEof => invalid("the .npy input ends early"),
        _ => JobError::new(ErrorCode::InputReadFailed, e.to_string()),
    };
    let mut magic = [0u8; 8];
    reader.read_exact(&mut magic).await.map_err(read_err)?;
    if &magic[..6] != b"\x93NUMPY" {
        return Err(invalid("not a .npy file (bad magic bytes)"));
    }
    let header_len = match magic[6] {
        1 => reader.read_u16_le().await.map_err(read_err)? as usize,
        2 | 3 => reader.read_u32_le().await.map_err(read_err)? as usize,
        v => return Err(invalid(format!(".npy format version {v} is not supported"))),
    };
    if header_len > 64 * 1024 {
        return Err(invalid(".npy header is implausibly long"));
    }
    let mut header = vec![0u8; header_len];
    reader.read_exact(&mut header).await.map_err(read_err)?;
    let header = String::from_utf8_lossy(&header);
    let (width, rows, cols) = parse_npy_header(&header)?;
    if rows > limits.max_rows || cols > limits.max_features + 1 {
        return Err(too_large(format!(
            "shape ({rows}, {cols}); this deployment allows {} rows and {} features",
            limits.max_rows, limits.max_features
        )));
    }
    let names: Vec<String> = (0..cols).map(|c| c.to_string()).collect();
    let label_index = names.iter().position(|n| n == label_column);
    if require_label && label_index.is_none() {
        return Err(invalid(format!(
            "missing label column `{label_column}`: .npy columns are named by index, 0..{}",
            cols.saturating_sub(1)
        )));
    }
    let group_index = group_index(split.group, &names)?;
    let split_off = usize::from(label_index.is_some()) + usize::from(group_index.is_some());
    if rows == 0 || cols <= split_off {
        return Err(invalid(format!(
            "the .npy input has shape ({rows}, {cols}): no data"
        )));
    }
    let feature_cols = cols - split_off;
    let mut groups = group_index.map(|_| Groups::default());
    // The shape check allows one column more for the label; without a label it is a feature.
    if feature_cols > limits.max_features {
        return Err(too_large(format!(
            "{feature_cols} feature columns; this deployment allows {}",
            limits.max_features
        )));
    }
    let cells = rows * feature_cols;
    if cells > limits.max_cells {
        return Err(too_large(format!(
            "shape ({rows}, {cols}): {cells} cells; this deployment allows {}",
            limits.max_cells
        )));
    }
    // The whole claimed shape counts against the budget (`rows × cols` fits: see the header).
    memory.grow_to((rows * cols * 4) as u64).await?;
    // The shape is a claim until the bytes arrive: allocate as they do.
    let mut data = Vec::new();
    let mut labels = label_index.map(|_| Vec::new());
    let mut row_bytes = vec![0u8; cols * width];
    for r in 0..rows {
        reader.read_exact(&mut row_bytes).await.map_err(read_err)?;
        let beside = labels.as_ref().map_or(0, Vec::capacity);
        make_room(&mut data, feature_cols, cells, beside, memory).await?;
        if let Some(l) = &mut labels {
            make_room(l, 1, rows, data.capacity(), memory).await?;
        }
        for c in 0..cols {
            let b = &row_bytes[c * width..(c + 1) * width];
            let v = if width == 4 {
                f32::from_le_bytes(b.try_into().expect("4 bytes"))
            } else {
                f64::from_le_bytes(b.try_into().expect("8 bytes")) as f32
            };
            let v = check_finite(v, r + 1, &names[c])?;
            if let (Some(g), true) = (&mut groups, Some(c) == group_index) {
                g.push(&number_text(v));
                continue;
            }
            match (&mut labels, Some(c) == label_index) {
                (Some(l), true) => l.push(v),
                _ => data.push(v),
            }
        }
    }
    trim(&mut data, &mut labels, memory);
    let columns = names
        .into_iter()
        .enumerate()
        .filter(|(i, _)| Some(*i) != label_index && Some(*i) != group_index);
    let columns = columns.map(|(_, n)| n).collect();
    Ok(Table {
        features: Matrix {
            rows,
            cols: feature_cols,
            data,
            columns,
        },
        labels,
        groups,
    })
}

/// A number as a group value: `3` rather than `3.0`.
fn number_text(v: f32) -> String {
    if v.fract() == 0.0 && v.abs() < 1e9 {
        format!("{}", v as i64)
    } else {
        format!("{v}")
    }
}

/// Returns (bytes per value, rows, cols) from a header such as
/// `{'descr': '<f4', 'fortran_order': False, 'shape': (3, 2), }`.
fn parse_npy_header(h: &str) -> Result<(usize, usize, usize), JobError> {
    let width = if h.contains("'<f4'") || h.contains("'f4'") {
        4
    } else if h.contains("'<f8'") || h.contains("'f8'") {
        8
    } else {
        return Err(invalid(format!(
            ".npy dtype must be little-endian float32 or float64: {h}"
        )));
    };
    if h.contains("'fortran_order': True") {
        return Err(invalid(
            ".npy input must be in C order (fortran_order is True)",
        ));
    }
    let shape = h
        .split("'shape':")
        .nth(1)
        .and_then(|s| s.split(')').next())
        .map(|s| s.trim().trim_start_matches('('))
        .ok_or_else(|| invalid(format!(".npy header has no shape: {h}")))?;
    let dims: Vec<usize> = shape
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| {
            s.parse()
                .map_err(|_| invalid(format!(".npy shape `{shape}` is not numeric")))
        })
        .collect::<Result<_, _>>()?;
    match dims[..] {
        [rows, cols] => {
            if rows
                .checked_mul(cols)
                .and_then(|n| n.checked_mul(width))
                .is_none()
            {
                return Err(invalid(format!(".npy shape ({rows}, {cols}) is too large")));
            }
            Ok((width, rows, cols))
        }
        _ => Err(invalid(format!(
            ".npy input must be 2-D, not shape ({shape})"
        ))),
    }
}

/// Builds a table from inline JSON rows (the API has checked they are numeric arrays).
pub fn from_rows(rows: &[Vec<f64>], labels: Option<&[f64]>) -> Result<Table, JobError> {
    let cols = rows.first().map(Vec::len).unwrap_or(0);
    if rows.is_empty() || cols == 0 {
        return Err(invalid("`rows` is empty"));
    }
    let mut data = Vec::with_capacity(rows.len() * cols);
    for (r, row) in rows.iter().enumerate() {
        if row.len() != cols {
            return Err(invalid(format!(
                "row {r} has {} values, row 0 has {cols}",
                row.len()
            )));
        }
        for (c, v) in row.iter().enumerate() {
            data.push(check_finite(*v as f32, r + 1, &c.to_string())?);
        }
    }
    let labels = labels.map(|l| l.iter().map(|&v| v as f32).collect::<Vec<_>>());
    if let Some(l) = &labels {
        if l.len() != rows.len() {
            return Err(invalid(format!(
                "{} labels for {} rows",
                l.len(),
                rows.len()
            )));
        }
        if l.iter().any(|v| !v.is_finite()) {
            return Err(invalid(
                "`labels` holds a value that is not a finite number",
            ));
        }
    }
    let columns = (0..cols).map(|c| c.to_string()).collect();
    Ok(Table {
        features: Matrix {
            rows: rows.len(),
            cols,
            data,
            columns,
        },
        labels,
        groups: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::memory::MemoryBudget;
    use std::pin::Pin;
    use std::task::{Context, Poll};
    use tokio::io::ReadBuf;

    /// The readers with no memory budget, as most tests want them.
    async fn read_csv<R: AsyncBufRead + Unpin>(
        reader: R,
        label_column: &str,
        require_label: bool,
        limits: &Limits,
    ) -> Result<Table, JobError> {
        let memory = &mut Reservation::unlimited();
        super::read_csv(reader, label_column, require_label, limits, memory).await
    }

    async fn read_npy<R: AsyncRead + Unpin>(
        reader: R,
        label_column: &str,
        require_label: bool,
        limits: &Limits,
    ) -> Result<Table, JobError> {
        let memory = &mut Reservation::unlimited();
        super::read_npy(reader, label_column, require_label, limits, memory).await
    }

    /// A CSV that never ends: a header of `cols` columns, then rows of zeros forever.
    struct EndlessCsv {
        bytes: Vec<u8>,
        row_start: usize,
        pos: usize,
    }

    impl EndlessCsv {
        fn new(cols: usize) -> Self {
            let header: Vec<String> = (0..cols).map(|c| format!("c{c}")).collect();
            let mut bytes = format!("{}\n", header.join(",")).into_bytes();
            let row_start = bytes.len();
            bytes.extend(format!("{}0\n", "0,".repeat(cols - 1)).into_bytes());
            Self {
                bytes,
                row_start,
                pos: 0,
            }
        }
    }

    impl AsyncRead for EndlessCsv {
        fn poll_read(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
            buf: &mut ReadBuf<'_>,
        ) -> Poll<std::io::Result<()>> {
            while buf.remaining() > 0 {
                if self.pos == self.bytes.len() {
                    self.pos = self.row_start;
                }
                let n = buf.remaining().min(self.bytes.len() - self.pos);
                buf.put_slice(&self.bytes[self.pos..self.pos + n]);
                self.pos += n;
            }
            Poll::Ready(Ok(()))
        }
    }

    #[tokio::test]
    async fn a_wide_csv_that_never_ends_fails_input_too_large_once_it_outgrows_the_budget() {
        let budget = MemoryBudget::new(16 << 20);
        let mut memory = budget.reserve();
        let reader = tokio::io::BufReader::new(EndlessCsv::new(60_000));
        let limits = Limits::default();
        let read = super::read_csv(reader, "label", false, &limits, &mut memory);
        let e = tokio::time::timeout(std::time::Duration::from_secs(60), read)
            .await
            .expect("refused while streaming, not at an end that never comes")
            .unwrap_err();
        assert_eq!(e.code, ErrorCode::InputTooLarge, "{}", e.message);
        assert!(memory.held() <= 16 << 20, "held {}", memory.held());
        // The cell cap trips the same way, budget or none.
        let limits = Limits {
            max_cells: 5 * 60_000,
            ..Limits::default()
        };
        let reader = tokio::io::BufReader::new(EndlessCsv::new(60_000));
        let e = read_csv(reader, "label", false, &limits).await.unwrap_err();
        assert_eq!(e.code, ErrorCode::InputTooLarge, "{}", e.message);
        assert!(e.message.contains("cells"), "{}", e.message);
    }

    #[tokio::test]
    async fn an_npy_claiming_a_huge_shape_fails_input_too_large_before_allocating() {
        // Over the cell cap: refused from the header alone.
        let e = read_npy(
            &npy("<f4", "(10000000, 60000)", &[0; 8])[..],
            "label",
            false,
            &Limits::default(),
        )
        .await
        .unwrap_err();
        assert_eq!(e.code, ErrorCode::InputTooLarge, "{}", e.message);
        // Within every cap but over the budget: refused with nothing reserved.
        let budget = MemoryBudget::new(1 << 20);
        let mut memory = budget.reserve();
        let bytes = npy("<f4", "(100000, 100)", &[0; 400]);
        let e = super::read_npy(&bytes[..], "label", false, &Limits::default(), &mut memory)
            .await
            .unwrap_err();
        assert_eq!(e.code, ErrorCode::InputTooLarge, "{}", e.message);
        assert_eq!(budget.held(), 0);
    }

    #[tokio::test]
    async fn a_table_read_within_the_budget_holds_exactly_its_bytes() {
        let budget = MemoryBudget::new(1 << 20);
        let mut memory = budget.reserve();
        let text = format!("a,b,label\n{}", "1,2,0\n".repeat(1000));
        let t = super::read_csv(
            text.as_bytes(),
            "label",
            true,
            &Limits::default(),
            &mut memory,
        )
        .await
        .unwrap();
        assert_eq!(t.features.data.len(), 2000);
        assert_eq!(memory.held(), 3000 * 4);
        let vals: Vec<u8> = (0..6).flat_map(|v| (v as f32).to_le_bytes()).collect();
        let mut memory = budget.reserve();
        let t = super::read_npy(
            &npy("<f4", "(2, 3)", &vals)[..],
            "2",
            true,
            &Limits::default(),
            &mut memory,
        )
        .await
        .unwrap();
        assert_eq!((t.features.data.len(), memory.held()), (4, 24));
    }

    async fn csv(text: &str, require: bool) -> Result<Table, JobError> {
        read_csv(text.as_bytes(), "label", require, &Limits::default()).await
    }

    #[tokio::test]
    async fn a_group_column_is_split_off_as_text_and_a_missing_one_is_named() {
        let mut memory = MemoryBudget::new(1 << 30).reserve();
        let split = Columns {
            label: "label",
            require_label: false,
            group: Some("user"),
        };
        let text = "a,user,b\n1,alice,2\n3,bob,4\n5,alice,6\n";
        let t = read_csv_columns(text.as_bytes(), split, &Limits::default(), &mut memory)
            .await
            .unwrap();
        assert_eq!(t.features.columns, ["a", "b"]);
        assert_eq!(t.features.data, [1.0, 2.0, 3.0, 4.0, 5.0, 6.0]);
        let g = t.groups.unwrap();
        assert_eq!(
            (g.names.as_slice(), g.of_row.as_slice()),
            (&["alice".to_string(), "bob".into()][..], &[0, 1, 0][..])
        );
        assert_eq!(g.rows_by_group(), [vec![0, 2], vec![1]]);
        let e = read_csv_columns(&b"a,b\n1,2\n"[..], split, &Limits::default(), &mut memory)
            .await
            .unwrap_err();
        assert!(
            e.message.contains("missing group column `user`"),
            "{}",
            e.message
        );
        let payload: Vec<u8> = [1.0f32, 7.0, 2.0, 8.0]
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .collect();
        let split = Columns {
            group: Some("1"),
            ..split
        };
        let t = read_npy_columns(
            &npy("<f4", "(2, 2)", &payload)[..],
            split,
            &Limits::default(),
            &mut memory,
        )
        .await
        .unwrap();
        assert_eq!(t.groups.unwrap().names, ["7", "8"]);
        assert_eq!(t.features.data, [1.0, 2.0]);
    }

    #[tokio::test]
    async fn csv_splits_off_the_label_column_wherever_it_is() {
        let t = csv("a,label,b\n1,0,2\n3,1,4.5\n", true).await.unwrap();
        assert_eq!(t.features.data, vec![1.0, 2.0, 3.0, 4.5]);
        assert_eq!(t.features.columns, vec!["a", "b"]);
        assert_eq!(t.labels.unwrap(), vec![0.0, 1.0]);
    }

    #[tokio::test]
    async fn csv_non_numeric_cell_names_line_and_column() {
        let e = csv("a,b,label\n1,2,0\n3,x,1\n", true).await.unwrap_err();
        assert_eq!(e.code, ErrorCode::InvalidInput);
        assert!(
            e.message.contains("line 3") && e.message.contains("`b`"),
            "{}",
            e.message
        );
    }

    #[tokio::test]
    async fn csv_missing_label_column_is_named() {
        let e = csv("a,b\n1,2\n", true).await.unwrap_err();
        assert!(
            e.message.contains("missing label column `label`"),
            "{}",
            e.message
        );
        assert!(csv("a,b\n1,2\n", false).await.unwrap().labels.is_none());
    }

    #[tokio::test]
    async fn csv_nan_and_infinity_are_refused() {
        for bad in ["NaN", "inf", "-inf"] {
            let e = csv(&format!("a,label\n{bad},1\n"), true).await.unwrap_err();
            assert_eq!(e.code, ErrorCode::InvalidInput, "{bad}");
        }
    }

    #[tokio::test]
    async fn csv_repeated_column_names_are_refused() {
        let e = csv("a,b,b,label\n1,2,3,0\n", true).await.unwrap_err();
        assert!(
            e.message.contains("`b` appears more than once"),
            "{}",
            e.message
        );
    }

    #[tokio::test]
    async fn csv_ragged_rows_and_empty_inputs_are_refused() {
        assert!(csv("a,b,label\n1,2\n", true).await.is_err());
        assert!(csv("a,b,label\n1,2,3,4\n", true).await.is_err());
        assert!(csv("", true).await.is_err());
        assert!(csv("a,label\n", true).await.is_err());
    }

    #[tokio::test]
    async fn inputs_over_the_deployment_limits_are_refused_while_reading() {
        let limits = Limits {
            max_rows: 2,
            max_features: 2,
            ..Limits::default()
        };
        let read = |text: &'static str| async move {
            read_csv(text.as_bytes(), "label", true, &limits).await
        };
        assert!(read("a,b,label\n1,2,0\n3,4,1\n").await.is_ok());
        for over in ["a,b,label\n1,2,0\n3,4,1\n5,6,0\n", "a,b,c,label\n1,2,3,0\n"] {
            assert_eq!(
                read(over).await.unwrap_err().code,
                ErrorCode::InputTooLarge,
                "{over}"
            );
        }
        let long_line = format!("a,label\n{},1\n", "1".repeat(10_000));
        let e = read_csv(long_line.as_bytes(), "label", true, &limits)
            .await
            .unwrap_err();
        assert_eq!(e.code, ErrorCode::InputTooLarge);
        let e = read_npy(&npy("<f4", "(3, 2)", &[0; 24])[..], "label", false, &limits)
            .await
            .unwrap_err();
        assert_eq!(e.code, ErrorCode::InputTooLarge);
        // A huge claimed shape with no data behind it: refused, and nothing huge reserved.
        let e = read_npy(
            &npy("<f4", "(100000, 3)", &[0; 8])[..],
            "label",
            false,
            &Limits::default(),
        )
        .await
        .unwrap_err();
        assert_eq!(e.code, ErrorCode::InvalidInput);
    }

    fn npy(descr: &str, shape: &str, payload: &[u8]) -> Vec<u8> {
        let mut header =
            format!("{{'descr': '{descr}', 'fortran_order': False, 'shape': {shape}, }}");
        while !(10 + header.len() + 1).is_multiple_of(64) {
            header.push(' ');
        }
        header.push('\n');
        let mut out = b"\x93NUMPY\x01\x00".to_vec();
        out.extend((header.len() as u16).to_le_bytes());
        out.extend(header.as_bytes());
        out.extend(payload);
        out
    }

    /// Found by `fuzz/fuzz_targets/csv.rs` (`fuzz/regressions/csv/no-label-one-feature-over-limit`):
    /// with no label column, the one column the header check leaves for it was let through.
    #[tokio::test]
    async fn without_a_label_column_every_column_counts_against_max_features() {
        let limits = Limits {
            max_rows: 4,
            max_features: 3,
            ..Limits::default()
        };
        let e = read_csv(&b"`,b,c,l\n1,4,5,1"[..], "0", false, &limits)
            .await
            .unwrap_err();
        assert_eq!(e.code, ErrorCode::InputTooLarge, "{}", e.message);
        assert!(
            read_csv(&b"a,b,c,label\n1,4,5,1"[..], "label", true, &limits)
                .await
                .is_ok()
        );
        let e = read_npy(&npy("<f4", "(1, 4)", &[0; 16])[..], "label", false, &limits)
            .await
            .unwrap_err();
        assert_eq!(e.code, ErrorCode::InputTooLarge, "{}", e.message);
        assert!(
            read_npy(&npy("<f4", "(1, 4)", &[0; 16])[..], "3", true, &limits)
                .await
                .is_ok()
        );
    }

    #[tokio::test]
    async fn npy_float64_reads_and_names_columns_by_index() {
        let vals: Vec<u8> = [1.0f64, 2.0, 0.0, 3.0, 4.0, 1.0]
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .collect();
        let bytes = npy("<f8", "(2, 3)", &vals);
        let t = read_npy(&bytes[..], "2", true, &Limits::default())
            .await
            .unwrap();
        assert_eq!(t.features.data, vec![1.0, 2.0, 3.0, 4.0]);
        assert_eq!(t.labels.unwrap(), vec![0.0, 1.0]);
    }

    #[tokio::test]
    async fn npy_truncated_or_wrong_dtype_is_invalid_input() {
        let vals: Vec<u8> = [1.0f32, 2.0].iter().flat_map(|v| v.to_le_bytes()).collect();
        let e = read_npy(
            &npy("<f4", "(2, 2)", &vals)[..],
            "label",
            false,
            &Limits::default(),
        )
        .await
        .unwrap_err();
        assert_eq!(e.code, ErrorCode::InvalidInput);
        let e = read_npy(
            &npy("<i8", "(1, 1)", &[0; 8])[..],
            "label",
            false,
            &Limits::default(),
        )
        .await
        .unwrap_err();
        assert!(e.message.contains("float32 or float64"), "{}", e.message);
        let e = read_npy(
            &npy("<f4", "(2,)", &vals)[..],
            "label",
            false,
            &Limits::default(),
        )
        .await
        .unwrap_err();
        assert!(e.message.contains("2-D"), "{}", e.message);
    }
}
