// The current organisation is the one of the default project (`/users/settings`):
// where new resources go, and whose wallet billing shows when none is named.

import type { Api, Page } from "./api";
import type { Project } from "./types";

/** Make `organisationId` current: its default project (else its first) becomes the
 *  user's default project. The project made current, or null when it has none. */
export async function switchOrganisation(api: Api, organisationId: string): Promise<Project | null> {
  const projects = (
    await api.get<Page<Project>>("/projects", { organisation_id: organisationId, limit: 100 })
  ).items;
  const project = projects.find((p) => p.is_default) ?? projects[0] ?? null;
  if (project) await switchProject(api, project.id);
  return project;
}

export async function switchProject(api: Api, projectId: string): Promise<void> {
  await api.put("/users/settings", { default_project_id: projectId });
  await api.refreshUser();
}
