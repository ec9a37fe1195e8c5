# Rollcall on Google Cloud: stateless GPU replicas behind a global HTTPS load balancer,
# on Cloud SQL for PostgreSQL (truth), Memorystore for Redis (embedding mirror, events,
# dedupe keys) and a GCS bucket (photos). See docs/deployment.md.
#
#   internet --443--> global external Application LB (managed cert, TLS 1.2+)
#                       |  only LB and health-check ranges may reach :8080
#                       v
#            regional MIG of COS GPU VMs (autohealing on /healthz, autoscaling)
#              |  private IPs only, egress through Cloud NAT
#              +--> Cloud SQL (private IP, TLS)   +--> Memorystore (private IP, AUTH)
#              +--> GCS photos bucket             +--> Secret Manager (DB password, admin key, Redis AUTH)

provider "google" {
  project        = var.project_id
  region         = var.region
  default_labels = local.labels
}

locals {
  labels = merge({ app = "rollcall", managed-by = "terraform" }, var.labels)

  # Network tag the firewall rules target.
  vm_tag = "${var.name}-vm"

  photos_bucket = coalesce(var.photos_bucket_name, "${var.project_id}-${var.name}-photos")
  registry_host = "${var.region}-docker.pkg.dev"

  db_name = "rollcall"
  db_user = "rollcall"

  apis = [
    "artifactregistry.googleapis.com",
    "compute.googleapis.com",
    "dns.googleapis.com",
    "iam.googleapis.com",
    "logging.googleapis.com",
    "monitoring.googleapis.com",
    "redis.googleapis.com",
    "secretmanager.googleapis.com",
    "servicenetworking.googleapis.com",
    "sqladmin.googleapis.com",
  ]
}

resource "google_project_service" "apis" {
  for_each = var.enable_apis ? toset(local.apis) : toset([])

  project = var.project_id
  service = each.value

  # Other workloads in the project may use these APIs too.
  disable_on_destroy = false
}
