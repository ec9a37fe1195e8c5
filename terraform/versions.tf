terraform {
  required_version = ">= 1.5.0"

  required_providers {
    google = {
      source  = "hashicorp/google"
      version = "~> 6.50"
    }
    random = {
      source  = "hashicorp/random"
      version = "~> 3.7"
    }
  }

  # The state holds the generated database password and admin key (they are also in
  # Secret Manager): keep it in a private, versioned bucket, e.g.
  #   terraform init -backend-config="bucket=MY-TF-STATE" -backend-config="prefix=rollcall"
  # after uncommenting:
  # backend "gcs" {}
}
