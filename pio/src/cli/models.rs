//! `pio models list | fetch`.

use std::process::ExitCode;

use crate::models::{KnownModel, KNOWN_MODELS};

use super::output::print_table;

/// `pio models list`: every known model, whether it is cached, and where.
pub fn list() -> anyhow::Result<ExitCode> {
    let rows: Vec<Vec<String>> = KNOWN_MODELS
        .iter()
        .map(|m| {
            vec![
                m.id.to_owned(),
                m.package_list(),
                if m.is_present() { "yes" } else { "no" }.to_owned(),
                m.path().display().to_string(),
            ]
        })
        .collect();
    print_table(&["ID", "PACKAGES", "CACHED", "PATH"], &rows);
    Ok(ExitCode::SUCCESS)
}

/// `pio models fetch [ID...]`: fetches the named models, or all of them.
pub fn fetch(ids: &[String]) -> anyhow::Result<ExitCode> {
    let models: Vec<&KnownModel> = if ids.is_empty() {
        KNOWN_MODELS.iter().collect()
    } else {
        ids.iter()
            .map(|id| {
                KnownModel::find(id).ok_or_else(|| {
                    let known: Vec<&str> = KNOWN_MODELS.iter().map(|m| m.id).collect();
                    anyhow::anyhow!("unknown model '{id}'; known models: {}", known.join(", "))
                })
            })
            .collect::<anyhow::Result<_>>()?
    };
    for model in models {
        let path = model.ensure()?;
        println!("{}\t{}", model.id, path.display());
    }
    Ok(ExitCode::SUCCESS)
}
