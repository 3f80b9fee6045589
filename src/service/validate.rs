//! Collects every field error of a request before any of it is acted on.

use super::{FieldError, ServiceError};

#[derive(Default)]
pub struct Check {
    errors: Vec<FieldError>,
}

impl Check {
    /// The value when `parsed` is valid; otherwise notes the error under `field`.
    pub fn field<T, E: std::fmt::Display>(
        &mut self,
        field: &str,
        parsed: Result<T, E>,
    ) -> Option<T> {
        match parsed {
            Ok(value) => Some(value),
            Err(error) => {
                self.fail(field, error.to_string());
                None
            }
        }
    }

    pub fn fail(&mut self, field: &str, message: impl Into<String>) {
        self.errors.push(FieldError {
            field: field.into(),
            message: message.into(),
        });
    }

    /// Text of at most `max` characters, no control characters.
    pub fn text(&mut self, field: &str, value: Option<String>, max: usize) -> Option<String> {
        let value = value?;
        if value.chars().count() > max {
            self.fail(field, format!("at most {max} characters"));
            None
        } else if value
            .chars()
            .any(|c| c.is_control() && c != '\n' && c != '\t')
        {
            self.fail(field, "control characters are not allowed");
            None
        } else {
            Some(value)
        }
    }

    /// A tenant id: 1–128 printable ASCII characters.
    pub fn tenant(&mut self, field: &str, value: Option<String>) -> Option<String> {
        let value = value?;
        if value.is_empty() || value.len() > 128 || !value.bytes().all(|b| b.is_ascii_graphic()) {
            self.fail(
                field,
                "a tenant id is 1 to 128 printable ASCII characters without spaces",
            );
            None
        } else {
            Some(value)
        }
    }

    /// `Ok(())` when no field failed, else every failure at once.
    pub fn finish(self) -> Result<(), ServiceError> {
        if self.errors.is_empty() {
            Ok(())
        } else {
            Err(ServiceError::Invalid(self.errors))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_failed_field_is_reported_together() {
        let mut check = Check::default();
        assert_eq!(check.field("a", "5".parse::<i32>()), Some(5));
        assert_eq!(check.field("b", "x".parse::<i32>()), None);
        assert_eq!(check.text("c", Some("é".repeat(4)), 3), None);
        assert_eq!(check.tenant("d", Some("acme corp".into())), None);
        assert_eq!(check.tenant("e", Some("acme".into())), Some("acme".into()));
        let Err(ServiceError::Invalid(fields)) = check.finish() else {
            panic!()
        };
        let names: Vec<_> = fields.iter().map(|f| f.field.as_str()).collect();
        assert_eq!(names, ["b", "c", "d"]);
    }
}
