// The sub-navigation of the billing, monitoring and account areas.

export const billingLinks: [string, string][] = [
  ["/billing", "Wallet"],
  ["/billing/invoices", "Invoices"],
  ["/billing/quotes", "Quotes"],
  ["/billing/reseller", "Reseller"],
];

export const monitoringLinks: [string, string][] = [
  ["/monitoring", "Alerts"],
  ["/monitoring/webhooks", "Webhooks"],
];

export const accountLinks: [string, string][] = [
  ["/account", "Profile"],
  ["/account/api-keys", "API keys"],
  ["/account/organisations", "Organisations"],
  ["/account/projects", "Projects"],
];

/** The platform administrators' area (shown to users with `is_admin` only). */
export const adminLinks: [string, string][] = [
  ["/admin", "Hosts"],
  ["/admin/users", "Users"],
  ["/admin/payouts", "Payouts"],
  ["/admin/prices", "Prices"],
  ["/admin/images", "Images"],
  ["/admin/analytics", "Analytics"],
];
