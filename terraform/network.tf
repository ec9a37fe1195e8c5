# VPC, subnet, Cloud NAT, private services access and firewall rules.

resource "google_compute_network" "this" {
  name                    = "${var.name}-vpc"
  auto_create_subnetworks = false
  routing_mode            = "REGIONAL"

  depends_on = [google_project_service.apis]
}

resource "google_compute_subnetwork" "this" {
  name          = "${var.name}-subnet"
  region        = var.region
  network       = google_compute_network.this.id
  ip_cidr_range = var.subnet_cidr

  # The VMs have no public IP: Google APIs (Artifact Registry, Secret Manager, GCS,
  # the COS driver download) are reached through Private Google Access.
  private_ip_google_access = true

  log_config {
    aggregation_interval = "INTERVAL_10_MIN"
    flow_sampling        = 0.5
    metadata             = "INCLUDE_ALL_METADATA"
  }
}

# Outbound Internet for the VMs (images hosted outside Artifact Registry), without
# giving them public addresses.
resource "google_compute_router" "this" {
  name    = "${var.name}-router"
  region  = var.region
  network = google_compute_network.this.id
}

resource "google_compute_router_nat" "this" {
  name                               = "${var.name}-nat"
  region                             = var.region
  router                             = google_compute_router.this.name
  nat_ip_allocate_option             = "AUTO_ONLY"
  source_subnetwork_ip_ranges_to_nat = "LIST_OF_SUBNETWORKS"

  subnetwork {
    name                    = google_compute_subnetwork.this.id
    source_ip_ranges_to_nat = ["ALL_IP_RANGES"]
  }

  log_config {
    enable = true
    filter = "ERRORS_ONLY"
  }
}

# Private services access: Cloud SQL and Memorystore get private IPs in this range,
# reachable from the VPC only.
resource "google_compute_global_address" "private_services" {
  name          = "${var.name}-private-services"
  purpose       = "VPC_PEERING"
  address_type  = "INTERNAL"
  prefix_length = var.private_services_prefix_length
  network       = google_compute_network.this.id
}

resource "google_service_networking_connection" "private_services" {
  network                 = google_compute_network.this.id
  service                 = "servicenetworking.googleapis.com"
  reserved_peering_ranges = [google_compute_global_address.private_services.name]

  # Google releases the peering only some time after Cloud SQL and Memorystore are gone;
  # abandoning it lets `terraform destroy` finish (it is removed with the network).
  deletion_policy = "ABANDON"
}

# HTTPS in: TLS terminates at the global load balancer (port 443, and port 80 only to
# redirect to 443). The VMs accept the proxied traffic and health checks on 8080 from
# Google's front-end and health-check ranges, and nothing else from the Internet.
resource "google_compute_firewall" "allow_https_from_lb" {
  name        = "${var.name}-allow-lb-to-app"
  network     = google_compute_network.this.id
  description = "HTTPS via the load balancer: Google front ends and health checkers to Rollcall on 8080."
  direction   = "INGRESS"
  priority    = 1000

  source_ranges = ["130.211.0.0/22", "35.191.0.0/16"]
  target_tags   = [local.vm_tag]

  allow {
    protocol = "tcp"
    ports    = ["8080"]
  }

  log_config {
    metadata = "INCLUDE_ALL_METADATA"
  }
}

resource "google_compute_firewall" "allow_ssh" {
  count = length(var.ssh_source_ranges) > 0 ? 1 : 0

  name        = "${var.name}-allow-ssh"
  network     = google_compute_network.this.id
  description = "SSH to the VMs from the configured ranges only (default: IAP TCP forwarding)."
  direction   = "INGRESS"
  priority    = 1000

  source_ranges = var.ssh_source_ranges
  target_tags   = [local.vm_tag]

  allow {
    protocol = "tcp"
    ports    = ["22"]
  }

  log_config {
    metadata = "INCLUDE_ALL_METADATA"
  }
}

# Explicit lowest-priority deny, so the intent survives someone adding broad rules.
resource "google_compute_firewall" "deny_all_ingress" {
  name        = "${var.name}-deny-all-ingress"
  network     = google_compute_network.this.id
  description = "Deny every other inbound connection."
  direction   = "INGRESS"
  priority    = 65534

  source_ranges = ["0.0.0.0/0"]

  deny {
    protocol = "all"
  }

  log_config {
    metadata = "INCLUDE_ALL_METADATA"
  }
}
