//! Who may do what through the admin API.

use crate::words::word_enum;

word_enum! {
    /// The role of an admin token. `viewer` reads; `operator` also revokes tunnels;
    /// `admin` changes everything.
    pub enum Role ("role") {
        Viewer = "viewer",
        Operator = "operator",
        Admin = "admin",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roles_are_words_and_anything_else_is_refused_with_the_choices() {
        for role in Role::ALL {
            assert_eq!(role.as_str().parse::<Role>(), Ok(*role));
            assert_eq!(serde_json::to_string(role).unwrap(), format!("\"{role}\""));
        }
        let e = "root".parse::<Role>().unwrap_err().to_string();
        assert_eq!(e, "invalid role \"root\": viewer, operator or admin");
        assert!(serde_json::from_str::<Role>("\"Admin\"").is_err(), "words are exact");
    }
}
